# Bakehouse: one image for the web server, the Celery worker and beat (docker-compose.yml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BAKEHOUSE_VAR_DIR=/var/lib/bakehouse

# The real tools the pipeline runs: mksquashfs/unsquashfs, mkfs.erofs, gpg, zstd/xz for upstream
# archives, systemd-sysext to verify images (needs a privileged worker; otherwise "skipped"),
# bubblewrap to sandbox source builds (needs user namespaces; see README, Source builds).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        squashfs-tools erofs-utils gnupg zstd xz-utils fdisk e2fsprogs btrfs-progs fakeroot bzip2 systemd util-linux ca-certificates bubblewrap \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
RUN useradd --system --home-dir /var/lib/bakehouse --shell /usr/sbin/nologin bakehouse \
    && mkdir -p /var/lib/bakehouse \
    && chown bakehouse:bakehouse /var/lib/bakehouse
USER bakehouse
VOLUME ["/var/lib/bakehouse"]

EXPOSE 8000
CMD ["gunicorn", "portal.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
