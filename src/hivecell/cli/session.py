import typer

app = typer.Typer(help="Coding-agent sessions.", no_args_is_help=True)
