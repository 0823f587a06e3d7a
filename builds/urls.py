from django.urls import path

from builds import views

urlpatterns: list = [
    path("artifacts/<path:key>", views.artifact_download, name="artifact-download"),
]
