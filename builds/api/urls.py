"""REST routes of the builds app, mounted under /api/ (namespace ``builds-api``)."""

from django.urls import path

from builds.api import views

app_name = "builds-api"

urlpatterns = [
    path("flavours/", views.FlavourListCreateView.as_view(), name="flavour-list"),
    path("flavours/<str:pk>/", views.FlavourDetailView.as_view(), name="flavour-detail"),
    path(
        "flavours/<str:pk>/rotate-token", views.FlavourRotateTokenView.as_view(), name="flavour-rotate-token"
    ),
    path("flavours/<str:pk>/butane", views.FlavourButaneView.as_view(), name="flavour-butane"),
    path("flavours/<str:pk>/ignition", views.FlavourIgnitionView.as_view(), name="flavour-ignition"),
    path("flavours/<str:pk>/compare/<str:base>", views.FlavourCompareView.as_view(), name="flavour-compare"),
    path("flavours/<str:pk>/builds/", views.FlavourBuildsView.as_view(), name="flavour-builds"),
    path("builds/", views.BuildListView.as_view(), name="build-list"),
    path("builds/<uuid:pk>/", views.BuildDetailView.as_view(), name="build-detail"),
    path("builds/<uuid:pk>/log", views.BuildLogView.as_view(), name="build-log"),
    path("builds/<uuid:pk>/cancel", views.BuildCancelView.as_view(), name="build-cancel"),
    path("builds/<uuid:pk>/retry", views.BuildRetryView.as_view(), name="build-retry"),
    path(
        "builds/<uuid:pk>/artifacts/<int:artifact_id>/download",
        views.ArtifactDownloadView.as_view(),
        name="artifact-download",
    ),
    path("webhooks/", views.WebhookListCreateView.as_view(), name="webhook-list"),
    path("webhooks/<int:pk>/", views.WebhookDetailView.as_view(), name="webhook-detail"),
    path("webhooks/<int:pk>/deliveries/", views.WebhookDeliveriesView.as_view(), name="webhook-deliveries"),
]
