from pathlib import Path

from django.apps import AppConfig
from django.conf import settings


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Bakehouse portal"

    def ready(self) -> None:
        make_local_directories()


def make_local_directories() -> None:
    """Make the directories under var/ that the embedded defaults read before anything writes there.

    Here, when a process starts, rather than in the settings: importing them writes no files.
    The secret key file is made on first use (portal.config.secret_key_in_file); caches, the
    artifact store and the fetch cache make their own directories when they first write.
    """
    directories = [Path(settings.STATIC_ROOT)]  # whitenoise warns about a missing one
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3" and str(database["NAME"]) != ":memory:":
        directories.append(Path(database["NAME"]).parent)
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
        folders = ("data_folder_in", "processed_folder", "control_folder")
        directories += [Path(str(options[folder])) for folder in folders]
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
