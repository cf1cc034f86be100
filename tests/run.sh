#!/usr/bin/env bash
# Herald's one test command: installs whatever the tests need and is missing on a fresh
# Debian machine (Node.js for the proto linter, PostgreSQL for the database tests, Chromium
# for the web console's browser tests), then lints and runs every test. The end-to-end suite
# runs twice: on SQLite, then on PostgreSQL.
#
#   bash tests/run.sh            # everything
#   HERALD_SKIP_LINT=1 bash tests/run.sh   # tests only
#   HERALD_FUZZ_SECONDS=0 bash tests/run.sh   # without the fuzzing step (default: 60 s a target)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

install_apt() {
    step "installing $* (apt)"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v cargo >/dev/null || { echo "error: cargo is missing; install Rust from rustup first" >&2; exit 1; }
command -v npx >/dev/null || missing+=(nodejs npm)
# The tests start their own throwaway PostgreSQL clusters with initdb and pg_ctl.
pg_bindir="$(pg_config --bindir 2>/dev/null || true)"
[ -x "$pg_bindir/initdb" ] || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
# The Redis broker's tests start their own throwaway redis-server (no persistence).
command -v redis-server >/dev/null || missing+=(redis-server)
# The web console's browser tests drive Debian's Chromium (playwright-core downloads no browser).
[ -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ] || missing+=(chromium)
# Emoji (the chat's reactions) in the screenshots.
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing+=(fonts-noto-color-emoji)
[ ${#missing[@]} -eq 0 ] || install_apt "${missing[@]}"

if [ -z "${HERALD_SKIP_LINT:-}" ]; then
    step "buf lint (proto/)"
    npx -y @bufbuild/buf@1.75.0 lint

    step "cargo fmt --check"
    cargo fmt --all -- --check

    step "cargo clippy --all-targets -D warnings"
    cargo clippy --workspace --all-targets --quiet -- -D warnings
fi

step "cargo build --bin herald (end-to-end tests start it as a separate process)"
cargo build --bin herald

step "cargo test (unit, property, database and end-to-end tests on SQLite)"
cargo test --workspace

step "cargo test (the end-to-end suite again, on PostgreSQL)"
HERALD_TEST_DATABASE=postgres cargo test -p herald-e2e --test e2e

step "grpc-web end-to-end tests with Connect-ES (tests/web: npm ci, buf generate, node --test)"
(cd tests/web && npm ci --no-audit --no-fund && npx buf generate && node --test)

step "TypeScript SDK (clients/ts: npm ci, build, unit and integration tests against herald serve)"
(cd clients/ts && npm ci --no-audit --no-fund && npm run build && npm test)

step "web console (clients/web: npm ci, build, the committed dist/ is that build, browser tests in Chromium)"
(
    cd clients/web
    npm ci --no-audit --no-fund
    npm run build
    if [ -n "$(git status --porcelain -- dist)" ]; then
        git status --short -- dist >&2
        echo "error: clients/web/dist is not the build of clients/web (its sources, the TypeScript SDK or a .proto changed): run \`npm run build\` in clients/ts, then in clients/web, and commit clients/web/dist" >&2
        exit 1
    fi
    npm test
)

fuzz_seconds="${HERALD_FUZZ_SECONDS:-60}"
if [ "$fuzz_seconds" -gt 0 ]; then
    step "fuzzing: each target in fuzz/ for ${fuzz_seconds} s from its corpus (cargo fuzz, libFuzzer)"
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
    for target in edge_frame topic token; do
        # A scratch copy of the seeds: what a run discovers stays out of the checkout.
        corpus="target/fuzz/corpus/$target"
        mkdir -p "$corpus" && cp -r "fuzz/corpus/$target/." "$corpus/"
        RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz --target-dir target/fuzz -s none \
            "$target" "$corpus" -- -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 -print_final_stats=1
    done
fi
