# scripts/lib/preflight.sh -- sourced by scripts/test: checks, once and before any
# test runs, that every tool the suite calls is there, naming the Debian package
# that provides it (the list is scripts/lib/debian-packages, which scripts/setup
# installs).  A missing tool fails here in one line instead of deep inside a test.

preflight() {
    local root=$1 py=$2 missing=() pkg check
    while read -r pkg check _; do
        case "$pkg" in ''|'#'*) continue ;; esac
        case "$check" in
            -|"") ;;
            @pyheaders)
                "$py" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
                    || missing+=("Python.h for $("$py" -c 'import sys; print(sys.executable)') ($pkg)") ;;
            @libfuzzer)
                command -v clang >/dev/null && _preflight_libfuzzer || missing+=("clang's libFuzzer/ASan runtime ($pkg)") ;;
            *)
                command -v "$check" >/dev/null || missing+=("$check ($pkg)") ;;
        esac
    done < "$root/scripts/lib/debian-packages"
    if [ ${#missing[@]} -gt 0 ]; then
        echo "test: missing before the suite can run: ${missing[*]}" >&2
        echo "test: scripts/setup installs them with apt-get; on another platform install them by hand (README, 'Platforms')" >&2
        return 1
    fi
}

# Links a one-line libFuzzer target with the sanitizers fuzz/Makefile uses.
_preflight_libfuzzer() {
    local d rc
    d=$(mktemp -d)
    printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' > "$d/t.c"
    clang -fsanitize=fuzzer,address,undefined -o "$d/t" "$d/t.c" >/dev/null 2>&1
    rc=$?
    rm -rf "$d"
    return $rc
}
