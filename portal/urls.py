from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from portal import auth_api, views
from portal.forms import ThrottledAdminAuthenticationForm

# The admin site's sign-in spends the same guessing budgets as /signin/ and the token API.
admin.site.login_form = ThrottledAdminAuthenticationForm

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/auth/token/", auth_api.obtain_token, name="api-auth-token"),
    # Each app owns its URL modules; pages and API are twin namespaces.
    path("api/", include("catalog.api.urls")),
    path("api/", include("builds.api.urls")),
    path("", include("portal.page_urls")),
    path("", include("catalog.urls")),
    path("", include("builds.urls")),
]

# Under /api/, the 404 of a URL no route matches and Django's own 400s are JSON like every API error.
handler404 = "portal.api.not_found"
handler400 = "portal.api.bad_request"
