from imloss_cli.cli import app

app(prog_name="imloss")
