package main

import (
	"strings"
	"testing"
	"time"
)

const sample = `goos: linux
goarch: amd64
pkg: github.com/keywarden/keywarden/e2e
BenchmarkScenario_node
    scenario_test.go:120: figure pods = 250
BenchmarkScenario_node-2   	       1	         0 ns/op	       250.0 pods	        10.00 secrets/pod	  2.000 publish-warm-p99-ms	  0.5000 floor-p99-ms	  20000 getsecret-reads/s	  4000 vaultkv-reads/s	 100 getsecret-p99-µs	  1000 vaultkv-p99-µs	 36 vault-req/min	 5400 baseline-vault-req/min	 9 vault-req/min-samesecrets	 9 vault-req/min-1pod	 10 poll-s	 10500 rotation-p99-ms	 40 rss-MiB	 900 baseline-rss-MiB	 800 restart-ms
BenchmarkCSI_publish/warm-2         	     100	         0 ns/op	      4200 p50-µs	     16000 p99-µs
BenchmarkVerifier_Verify/ES256-2    	    2000	    166000 ns/op
PASS
ok  	github.com/keywarden/keywarden/e2e	300.1s
`

func TestParse(t *testing.T) {
	res, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if got := res["BenchmarkScenario_node"]["publish-warm-p99-ms"]; got != 2 {
		t.Fatalf("publish-warm-p99-ms = %v, want 2", got)
	}
	if got := res["BenchmarkCSI_publish/warm"]["p99-µs"]; got != 16000 {
		t.Fatalf("CSI warm p99 = %v, want 16000", got)
	}
	if _, ok := res["BenchmarkVerifier_Verify/ES256"]; !ok {
		t.Fatalf("the -2 suffix was not trimmed: %v", res)
	}
}

func TestParse_bad(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"value without unit", "BenchmarkX-2 1 5 ns/op 7\n", "without a unit"},
		{"not a number", "BenchmarkX-2 1 five ns/op\n", "not a finite number"},
		{"NaN", "BenchmarkX-2 1 NaN ns/op\n", "not a finite number"},
		{"infinite", "BenchmarkX-2 1 +Inf ns/op\n", "not a finite number"},
		{"line too long", "BenchmarkX-2 1 " + strings.Repeat("1", maxLine) + " ns/op\n", "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	// Lines that are not results are skipped, not errors.
	for _, in := range []string{"BenchmarkX\n", "BenchmarkX-2 logs something\n", "--- FAIL: BenchmarkX\n", ""} {
		if res, err := Parse(strings.NewReader(in)); err != nil || len(res) != 0 {
			t.Fatalf("Parse(%q) = %v, %v; want nothing", in, res, err)
		}
	}
}

func TestRows(t *testing.T) {
	res, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	table := Markdown(Rows(res))
	for _, want := range []string{
		"| warm GetSecret throughput, 16 callers (reads/s) vs direct vault/api KV read | 20,000 | 4,000 | 5.00× | ≥ 5× | yes |",
		"| warm GetSecret p99 (µs) vs direct KV read p99 | 100 | 1,000 | 1/10 | ≤ 1/5 | yes |",
		"| warm NodePublishVolume p99 (ms) vs tmpfs mount + write p99 | 2.00 | 0.50 | 4.00× | < 5 ms | yes |",
		"| Vault requests/min at 250 pods vs per-pod baseline | 36.0 | 5,400 | 1/150 | ≤ 1/50 | yes |",
		"| Vault requests/min for pod 0's secrets: 250 pods vs 1 pod | 9.00 | 9.00 | 1.00× | ≤ 1.1× | yes |",
		"| rotation propagation p99 (ms), KV write → every file and stream | 10,500 | poll 10.0 s | — | ≤ poll + 1 s | yes |",
		"| restart with 250 volumes until ready (ms) | 800 | — | — | < 2 s | yes |",
		"| micro: NodePublishVolume warm p99 (µs) | 16,000 | — | — | < 5,000 µs | **no** |",
		"| micro: Verifier_Verify/ES256 (verifications/s, one core) | 6,024 | — | — | — | — |",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks\n%s\n---\n%s", want, table)
		}
	}
	doc := Document(res, table, Machine{CPUs: 2, MemTotal: "7.8 GiB", CPUName: "Test CPU", GoVersion: "go1.26", Commit: "abc1234", Date: time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)})
	for _, want := range []string{"2 CPUs, 7.8 GiB RAM, Test CPU", "commit: abc1234", "250 pods on one node, 10 secrets each, poll interval 10 s"} {
		if !strings.Contains(doc, want) {
			t.Errorf("document lacks %q:\n%s", want, doc)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sample)
	f.Add("BenchmarkX-2 1 5 ns/op 7\n")
	f.Fuzz(func(t *testing.T, in string) {
		res, err := Parse(strings.NewReader(in))
		if err != nil {
			return
		}
		_ = Markdown(Rows(res)) // never panics on any parsed input
	})
}
