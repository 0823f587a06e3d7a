from django.urls import path

from catalog import views

app_name = "catalog"

urlpatterns = [
    path("catalog/", views.extension_list, name="extension-list"),
    path("catalog/<str:name>/", views.extension_detail, name="extension-detail"),
    path("catalog/<str:name>/propose/", views.version_propose, name="version-propose"),
    path("versions/<int:pk>/review/", views.version_review, name="version-review"),
    path("custom-extensions/new/", views.custom_extension_create, name="custom-extension-create"),
]
