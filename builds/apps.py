from django.apps import AppConfig


class BuildsConfig(AppConfig):
    name = "builds"

    def ready(self) -> None:
        from builds.cache_scopes import connect_read_cache

        connect_read_cache()
