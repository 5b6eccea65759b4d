#!/bin/sh
# Chromium in kiosk mode on the local check-in page, with a fresh profile in memory:
# a tmpfs user-data-dir made at each start and removed at exit, so nothing a patient
# typed survives in the browser's profile. Autofill and password saving are off (in
# the profile's preferences here, and by policy: chromium-policy.json).
#   kiosk-browser.sh [URL]      (default http://127.0.0.1:8080/)
set -eu
URL="${1:-http://127.0.0.1:8080/}"
BASE="${XDG_RUNTIME_DIR:-/dev/shm}"
PROFILE="$(mktemp -d "$BASE/haven-chromium.XXXXXX")"
trap 'rm -rf "$PROFILE"' EXIT INT TERM
case "$(stat -f -c %T "$PROFILE")" in
    tmpfs|ramfs) ;;
    *) echo "kiosk-browser: $BASE is not in memory; refusing a profile on disk" >&2; exit 1 ;;
esac
mkdir -p "$PROFILE/Default"
cat >"$PROFILE/Default/Preferences" <<'JSON'
{"autofill": {"enabled": false, "profile_enabled": false, "credit_card_enabled": false},
 "credentials_enable_service": false, "credentials_enable_autosignin": false,
 "profile": {"password_manager_enabled": false}, "translate": {"enabled": false},
 "browser": {"has_seen_welcome_page": true}}
JSON
# Wait (bounded) for the runtime to serve the page.
i=0
while [ $i -lt 60 ]; do
    if command -v curl >/dev/null 2>&1 && curl -fs -o /dev/null "$URL"; then break; fi
    i=$((i + 1)); sleep 1
done
exec /usr/bin/chromium --kiosk --user-data-dir="$PROFILE" --disk-cache-dir=/dev/null \
    --disk-cache-size=1 --no-first-run --noerrdialogs --disable-infobars \
    --disable-session-crashed-bubble --disable-restore-session-state \
    --disable-features=Translate,AutofillServerCommunication,PasswordManagerOnboarding \
    --disable-sync --disable-background-networking --disable-component-update \
    --password-store=basic --overscroll-history-navigation=0 --disable-pinch \
    --check-for-update-interval=31536000 "$URL"
