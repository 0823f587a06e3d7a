from django.urls import path

from catalog import views

app_name = "catalog"

urlpatterns = [
    path("catalog/", views.extension_list, name="extension-list"),
    path("catalog/<str:name>/", views.extension_detail, name="extension-detail"),
]
