from imloss_cli.cli.app import app

app(prog_name="imloss")
