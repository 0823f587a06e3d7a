from django.urls import path

from catalog.api import views

app_name = "catalog-api"

urlpatterns = [
    path("teams/<slug:slug>/", views.TeamDetailView.as_view(), name="team-detail"),
    path("teams/<slug:slug>/members/", views.TeamMemberListView.as_view(), name="team-member-list"),
    path(
        "teams/<slug:slug>/members/<str:username>/",
        views.TeamMemberDetailView.as_view(),
        name="team-member-detail",
    ),
    path("extensions/", views.ExtensionListView.as_view(), name="extension-list"),
    path("extensions/<str:name>/", views.ExtensionDetailView.as_view(), name="extension-detail"),
    path("extensions/<str:name>/versions/", views.VersionProposeView.as_view(), name="version-propose"),
    path("versions/<int:version_id>/", views.VersionDetailView.as_view(), name="version-detail"),
    path(
        "versions/<int:version_id>/approve",
        views.VersionDecisionView.as_view(decision="approve"),
        name="version-approve",
    ),
    path(
        "versions/<int:version_id>/reject",
        views.VersionDecisionView.as_view(decision="reject"),
        name="version-reject",
    ),
    path(
        "versions/<int:version_id>/deprecate",
        views.VersionDeprecateView.as_view(deprecated=True),
        name="version-deprecate",
    ),
    path(
        "versions/<int:version_id>/undeprecate",
        views.VersionDeprecateView.as_view(deprecated=False),
        name="version-undeprecate",
    ),
]
