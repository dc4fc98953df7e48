#!/usr/bin/env bash
# TPM benchmark: key creation and signing latency through devid's hal/tpm
# versus tpm2-tools doing the same on the same swtpm, in the same run, and
# the TLS 1.3 client handshake with the key in swtpm versus in software.
# Prints one markdown section on stdout (scripts/bench.sh collects it).
#   TPM_BENCH_N  iterations per operation (default 100)
set -euo pipefail
shopt -s lastpipe # so "loop | stats" sets variables in this shell
cd "$(dirname "$0")/../.."

N=${TPM_BENCH_N:-100}
dir=""
pid=""

cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "$dir" ]; then rm -rf "$dir"; fi
}

# stats NAME: reads microsecond samples on stdin, sets NAME_mean/_p50/_p95 (ms).
stats() {
  local name=$1
  read -r mean p50 p95 < <(sort -n | awk '{a[NR]=$1; s+=$1} END {
    i50=int(NR*0.50); if (i50<1) i50=1; i95=int(NR*0.95); if (i95<1) i95=1;
    printf "%.2f %.2f %.2f\n", s/NR/1000, a[i50]/1000, a[i95]/1000 }')
  printf -v "${name}_mean" %s "$mean"
  printf -v "${name}_p50" %s "$p50"
  printf -v "${name}_p95" %s "$p95"
}

us() { # elapsed microseconds between two $EPOCHREALTIME values
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%d\n", (b-a)*1000000 }'
}

# gobench PKG REGEX FIELD: mean ns/op (or FIELD's value) of one Go benchmark, in ms.
gobench() {
  awk -v re="$2" -v f="$3" '$1 ~ re { for (i=3; i<NF; i++) if ($(i+1)==f) { printf "%.2f\n", $i/1e6; exit } }' "$1"
}

main() {
  for t in swtpm tpm2_createprimary tpm2_create tpm2_load tpm2_sign tpm2_flushcontext; do
    if ! command -v "$t" >/dev/null; then
      printf '## TPM\n\n_skipped: %s not installed (scripts/deps.sh)._\n\n' "$t"
      return 0
    fi
  done
  trap cleanup EXIT
  dir=$(mktemp -d /tmp/devid-tpmbench.XXXXXX)
  swtpm socket --tpm2 --tpmstate dir="$dir" \
    --server type=unixio,path="$dir/tpm.sock" --ctrl type=unixio,path="$dir/tpm.sock.ctrl" \
    --flags not-need-init,startup-clear 2>/dev/null &
  pid=$!
  for _ in $(seq 200); do [ -S "$dir/tpm.sock" ] && break; sleep 0.05; done
  [ -S "$dir/tpm.sock" ] || { echo "tpm bench: swtpm did not start" >&2; return 1; }
  export TPM2TOOLS_TCTI="swtpm:path=$dir/tpm.sock"
  local attrs='fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign'
  local t0 t1 i

  # tpm2-tools: key creation = tpm2_createprimary (ECC SRK) + tpm2_create.
  # Without a resource manager the tools leave objects loaded; flushing
  # them is not timed.
  for ((i = 0; i < N; i++)); do
    t0=$EPOCHREALTIME
    tpm2_createprimary -Q -C o -G ecc256:aes128cfb -c "$dir/srk.ctx" 2>/dev/null
    tpm2_create -Q -C "$dir/srk.ctx" -G ecc256:null -a "$attrs" -u "$dir/k.pub" -r "$dir/k.priv" 2>/dev/null
    t1=$EPOCHREALTIME
    us "$t0" "$t1"
    tpm2_flushcontext -t 2>/dev/null
  done | stats tools_create

  # tpm2-tools: sign = tpm2_sign on a saved key context (ContextLoad + Sign).
  tpm2_createprimary -Q -C o -G ecc256:aes128cfb -c "$dir/srk.ctx" 2>/dev/null
  tpm2_load -Q -C "$dir/srk.ctx" -u "$dir/k.pub" -r "$dir/k.priv" -c "$dir/k.ctx" 2>/dev/null
  tpm2_flushcontext -t 2>/dev/null
  printf 'devid tpm bench digest 32 bytes!' >"$dir/digest"
  for ((i = 0; i < N; i++)); do
    t0=$EPOCHREALTIME
    tpm2_sign -Q -c "$dir/k.ctx" -g sha256 -s ecdsa -d -o "$dir/sig" "$dir/digest" 2>/dev/null
    t1=$EPOCHREALTIME
    us "$t0" "$t1"
    tpm2_flushcontext -t 2>/dev/null
  done | stats tools_sign

  # devid on the same swtpm (compile first so build time is not measured).
  go test -c -o "$dir/tpm.test" ./hal/tpm >/dev/null
  go test -c -o "$dir/tpmkey.test" ./enroll/keys/tpmkey >/dev/null
  DEVID_BENCH_TPM="unix:$dir/tpm.sock" "$dir/tpm.test" -test.run '^$' \
    -test.bench '^Benchmark(CreateKey|Sign)$' -test.benchtime "${N}x" >"$dir/ours.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  (cd enroll/keys/tpmkey && "$dir/tpmkey.test" -test.run '^$' -test.bench '^BenchmarkTLSHandshake$' \
    -test.benchtime "${N}x" >"$dir/tls.txt")

  local oc oc50 oc95 os os50 os95 tt ts
  oc=$(gobench "$dir/ours.txt" '^BenchmarkCreateKey' ns/op)
  oc50=$(gobench "$dir/ours.txt" '^BenchmarkCreateKey' p50-ns)
  oc95=$(gobench "$dir/ours.txt" '^BenchmarkCreateKey' p95-ns)
  os=$(gobench "$dir/ours.txt" '^BenchmarkSign' ns/op)
  os50=$(gobench "$dir/ours.txt" '^BenchmarkSign' p50-ns)
  os95=$(gobench "$dir/ours.txt" '^BenchmarkSign' p95-ns)
  tt=$(gobench "$dir/tls.txt" '^BenchmarkTLSHandshake/tpm' ns/op)
  ts=$(gobench "$dir/tls.txt" '^BenchmarkTLSHandshake/software' ns/op)
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a/b; else print "n/a" }'; }

  cat <<EOF
## TPM (swtpm $(swtpm --version 2>&1 | sed -n 's/.*version \([0-9.]*\).*/\1/p'), tpm2-tools $(tpm2_sign -v 2>&1 | sed -n 's/.*version="\([^"]*\)".*/\1/p'))

Same swtpm, same run, N=$N per operation. Times in ms.

| operation | devid mean | p50 | p95 | tpm2-tools mean | p50 | p95 | devid / tools (mean) |
|---|---|---|---|---|---|---|---|
| key creation (ECC SRK + P-256 signing key) | $oc | $oc50 | $oc95 | $tools_create_mean | $tools_create_p50 | $tools_create_p95 | $(ratio "$oc" "$tools_create_mean") |
| sign (ECDSA P-256, SHA-256, from saved context) | $os | $os50 | $os95 | $tools_sign_mean | $tools_sign_p50 | $tools_sign_p95 | $(ratio "$os" "$tools_sign_mean") |

| TLS 1.3 mutual-auth handshake on loopback | mean |
|---|---|
| client key in swtpm (devid tpm backend) | $tt |
| client key in software (ECDSA P-256) | $ts |
| ratio tpm / software | $(ratio "$tt" "$ts") |

devid figures are Go benchmarks (hal/tpm BenchmarkCreateKey, BenchmarkSign; enroll/keys/tpmkey
BenchmarkTLSHandshake). tpm2-tools figures are wall time per command invocation, which includes
process start and TCTI set-up. swtpm answers in about 1 ms; a discrete TPM takes 50-230 ms per
ECC key and 20-200 ms per signature (docs/tpm.md), so on hardware the TPM itself dominates.

EOF
}

main "$@"
