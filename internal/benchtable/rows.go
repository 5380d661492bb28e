package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

const scenario = "BenchmarkScenario_node"

// Row is one line of the table; empty cells print as "—".
type Row struct {
	Figure, Keywarden, Baseline, Ratio, Target, Met string
}

// met renders a target check.
func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// num renders a figure with precision that suits its size.
func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		return commas(fmt.Sprintf("%.0f", v))
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func commas(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// ratio renders a/b: "2.4×" above 1, "1/83" well below it.
func ratio(r float64) string {
	switch {
	case math.IsNaN(r) || math.IsInf(r, 0):
		return ""
	case r >= 1 || r >= 0.5:
		return fmt.Sprintf("%.2f×", r)
	case r > 0:
		return fmt.Sprintf("1/%.0f", 1/r)
	default:
		return "0"
	}
}

// Rows builds the table from the results it knows; figures absent from the input are left out.
func Rows(res Results) []Row {
	var rows []Row
	s, ok := res[scenario]
	has := func(units ...string) bool {
		for _, u := range units {
			if _, ok := s[u]; !ok {
				return false
			}
		}
		return ok
	}
	pods := "N"
	if has("pods") {
		pods = fmt.Sprintf("%.0f", s["pods"])
	}
	vs := func(figure, kw, base string, target string, check func(kw, base, r float64) bool) {
		if !has(kw) {
			return
		}
		row := Row{Figure: figure, Keywarden: num(s[kw]), Target: target}
		r := math.NaN()
		if base != "" && has(base) {
			row.Baseline = num(s[base])
			if s[base] != 0 {
				r = s[kw] / s[base]
				row.Ratio = ratio(r)
			}
		}
		if check != nil {
			row.Met = met(check(s[kw], s[base], r))
		}
		rows = append(rows, row)
	}
	vs("warm GetSecret throughput, 16 callers (reads/s) vs direct vault/api KV read", "getsecret-reads/s", "vaultkv-reads/s", "≥ 5×",
		func(_, _, r float64) bool { return r >= 5 })
	vs("warm GetSecret p99 (µs) vs direct KV read p99", "getsecret-p99-µs", "vaultkv-p99-µs", "≤ 1/5",
		func(_, _, r float64) bool { return r <= 0.2 })
	vs("warm GetSecret p50 (µs) vs direct KV read p50", "getsecret-p50-µs", "vaultkv-p50-µs", "", nil)
	vs("warm NodePublishVolume p99 (ms) vs tmpfs mount + write p99", "publish-warm-p99-ms", "floor-p99-ms", "< 5 ms",
		func(kw, _, _ float64) bool { return kw < 5 })
	vs("warm NodePublishVolume p50 (ms) vs tmpfs mount + write p50", "publish-warm-p50-ms", "floor-p50-ms", "", nil)
	vs("cold NodePublishVolume p50 (ms; first of its namespace and account: Vault fetches)", "publish-cold-p50-ms", "floor-p50-ms", "", nil)
	vs("cold NodePublishVolume p99 (ms)", "publish-cold-p99-ms", "floor-p99-ms", "", nil)
	vs("Vault requests/min for pod 0's secrets: "+pods+" pods vs 1 pod", "vault-req/min-samesecrets", "vault-req/min-1pod", "≤ 1.1×",
		func(_, _, r float64) bool { return r <= 1.1 })
	vs("Vault requests/min at "+pods+" pods vs per-pod baseline", "vault-req/min", "baseline-vault-req/min", "≤ 1/50",
		func(_, _, r float64) bool { return r <= 0.02 })
	if has("rotation-p99-ms", "poll-s") {
		poll := s["poll-s"] * 1000
		for _, q := range []string{"p50", "p99", "max"} {
			row := Row{Figure: "rotation propagation " + q + " (ms), KV write → every file and stream", Keywarden: num(s["rotation-"+q+"-ms"]),
				Baseline: "poll " + num(s["poll-s"]) + " s"}
			if q == "p99" {
				row.Target = "≤ poll + 1 s"
				row.Met = met(s["rotation-p99-ms"] <= poll+1000)
			}
			if has("rotation-" + q + "-ms") {
				rows = append(rows, row)
			}
		}
	}
	vs("daemon RSS (MiB) at "+pods+" pods vs per-pod baseline process", "rss-MiB", "baseline-rss-MiB", "< 64 MiB",
		func(kw, _, _ float64) bool { return kw < 64 })
	vs("daemon RSS, of which anonymous (MiB: Go heap, stacks, runtime)", "rss-anon-MiB", "", "", nil)
	vs("daemon RSS, of which file-backed (MiB: the binary, the bbolt files' mappings)", "rss-file-MiB", "", "", nil)
	vs("daemon Go heap in use (MiB)", "heap-inuse-MiB", "", "", nil)
	vs("secret read as a pod sees it, p50 (µs): GetSecret vs per-pod Vault read", "getsecret-p50-µs", "baseline-read-p50-µs", "", nil)
	vs("secret read as a pod sees it, p99 (µs): GetSecret vs per-pod Vault read", "getsecret-p99-µs", "baseline-read-p99-µs", "", nil)
	vs("daemon goroutines at "+pods+" pods", "goroutines", "", "", nil)
	vs("restart with "+pods+" volumes until ready (ms)", "restart-ms", "", "< 2 s",
		func(kw, _, _ float64) bool { return kw < 2000 })

	if m, ok := res["BenchmarkVault_throughputGetSecretVsDirectKV"]; ok {
		rows = append(rows, pair("micro: warm GetSecret, 16 callers (reads/s) vs direct KV", m, "daemon-reads/s", "vault-reads/s", "≥ 5×", func(r float64) bool { return r >= 5 }))
	}
	if m, ok := res["BenchmarkVault_warmGetSecretVsDirectKV"]; ok {
		rows = append(rows, pair("micro: warm GetSecret, 1 caller (ns/op) vs direct KV", m, "daemon-ns/op", "vault-ns/op", "", nil))
	}
	for _, sub := range []string{"warm", "vaultFetch"} {
		if m, ok := res["BenchmarkCSI_publish/"+sub]; ok {
			rows = append(rows, Row{Figure: "micro: NodePublishVolume " + sub + " p50 (µs)", Keywarden: num(m["p50-µs"])})
			row := Row{Figure: "micro: NodePublishVolume " + sub + " p99 (µs)", Keywarden: num(m["p99-µs"])}
			if sub == "warm" {
				row.Target, row.Met = "< 5,000 µs", met(m["p99-µs"] < 5000)
			}
			rows = append(rows, row)
		}
	}
	var verifiers []string
	for name := range res {
		if strings.HasPrefix(name, "BenchmarkVerifier_Verify") || strings.HasPrefix(name, "BenchmarkCachingVerifier_Verify") {
			verifiers = append(verifiers, name)
		}
	}
	sort.Strings(verifiers)
	for _, name := range verifiers {
		if ns := res[name]["ns/op"]; ns > 0 {
			rows = append(rows, Row{Figure: "micro: " + strings.TrimPrefix(name, "Benchmark") + " (verifications/s, one core)", Keywarden: num(1e9 / ns)})
		}
	}
	return rows
}

func pair(figure string, m map[string]float64, kw, base, target string, check func(float64) bool) Row {
	row := Row{Figure: figure, Keywarden: num(m[kw]), Baseline: num(m[base]), Target: target}
	if m[base] != 0 {
		r := m[kw] / m[base]
		row.Ratio = ratio(r)
		if check != nil {
			row.Met = met(check(r))
		}
	}
	return row
}

// Markdown renders the rows as one table.
func Markdown(rows []Row) string {
	var b strings.Builder
	writeRow(&b, "figure", "Keywarden", "baseline", "ratio", "target", "met?")
	writeRow(&b, "---", "---:", "---:", "---:", "---", "---")
	dash := func(s string) string {
		if s == "" {
			return "—"
		}
		return s
	}
	for _, r := range rows {
		writeRow(&b, r.Figure, dash(r.Keywarden), dash(r.Baseline), dash(r.Ratio), dash(r.Target), dash(r.Met))
	}
	return b.String()
}
