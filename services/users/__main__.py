"""`python -m services.users`: settings from the environment, then serve."""

from libs.common.app import run_app
from libs.common.settings import load_settings
from services.users.app import create_app
from services.users.settings import Settings


def main() -> None:
    settings = load_settings(Settings)
    run_app(create_app(settings), settings)


if __name__ == "__main__":
    main()
