from crmflow.cli.main import app

app()
