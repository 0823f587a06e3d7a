from django.contrib.auth import views as auth_views
from django.urls import path

from portal import views

urlpatterns = [
    path("", views.home, name="home"),
    path("signin/", views.SignInView.as_view(), name="login"),
    path("signout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/tokens/", views.api_tokens, name="api-tokens"),
]
