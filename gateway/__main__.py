"""`python -m gateway`: settings from the environment, then serve."""

from gateway.app import create_app
from gateway.settings import Settings
from libs.common.app import run_app
from libs.common.settings import load_settings


def main() -> None:
    settings = load_settings(Settings)
    run_app(create_app(settings), settings)


if __name__ == "__main__":
    main()
