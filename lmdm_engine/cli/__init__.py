from .effect import build_parser, cmd_train, main  # noqa: F401
