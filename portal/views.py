from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and docker-compose healthchecks."""
    return JsonResponse({"status": "ok"})
