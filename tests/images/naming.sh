# Names of this checkout's test images, for the shell (source it; bash). The same scheme as
# tests/naming.py, which documents it: id = JERP_TEST_ID when set (1 to 16 of a-z, 0-9), else
# the first 8 hex digits of the SHA-256 of the checkout's real path (`pwd -P`).
#
#   jerp_test_id [ROOT]   print the id of the checkout at ROOT (default: this one)
#   jerp_test_names       set test_id, test_label (jerp-test=<id>), image_prefix and the image
#                         variables base_image backend_image python_image redis_image
#                         mariadb_image jobs_image

_jerp_naming_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

jerp_test_id() {
    local root=${1:-$_jerp_naming_root} real
    if [ -n "${JERP_TEST_ID:-}" ]; then
        if ! [[ $JERP_TEST_ID =~ ^[a-z0-9]{1,16}$ ]]; then
            echo "error: JERP_TEST_ID='$JERP_TEST_ID': use 1 to 16 characters of a-z and 0-9" >&2
            return 1
        fi
        printf '%s\n' "$JERP_TEST_ID"
        return 0
    fi
    real=$(cd "$root" && pwd -P) || return 1
    printf '%s' "$real" | sha256sum | cut -c1-8
}

jerp_test_names() {
    test_id=$(jerp_test_id "$@") || return 1
    test_label=jerp-test=$test_id
    image_prefix=jerp-test-$test_id
    base_image=$image_prefix/debian-base:bookworm
    backend_image=$image_prefix/standin-backend:latest
    python_image=$image_prefix/python-base:bookworm
    redis_image=$image_prefix/redis:bookworm
    mariadb_image=$image_prefix/mariadb:bookworm
    jobs_image=$image_prefix/jobs:latest
}
