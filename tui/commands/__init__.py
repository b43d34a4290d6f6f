"""One module per `minicpm` subcommand: add_arguments(parser) and run(args)."""
