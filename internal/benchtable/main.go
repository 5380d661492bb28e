// Command benchtable reads `go test -bench` output on stdin and prints one table of the
// performance figures — figure | Keywarden | baseline | ratio | target | met? — from the
// node-scale scenario (BenchmarkScenario_node) and, when present in the input, the micro
// benchmarks (BenchmarkVault_*, BenchmarkCSI_publish, BenchmarkVerifier_Verify,
// BenchmarkCachingVerifier_Verify_warm). With -o it also writes the table as a Markdown file
// with the machine (CPUs, memory, CPU model), the Go version, the commit and the date.
// `make bench` runs it.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

func main() {
	out := flag.String("o", "", "also write the table and the machine to this Markdown file")
	flag.Parse()
	res, err := Parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	rows := Rows(res)
	if len(rows) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no known benchmark in the input")
		os.Exit(1)
	}
	table := Markdown(rows)
	fmt.Print(table)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(Document(res, table, MachineInfo())), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "benchtable:", err)
			os.Exit(1)
		}
	}
}

// Machine describes where the figures were measured.
type Machine struct {
	CPUs              int
	MemTotal, CPUName string
	GoVersion, Commit string
	Date              time.Time
}

// MachineInfo reads /proc and git; what it cannot read stays "unknown".
func MachineInfo() Machine {
	m := Machine{CPUs: runtime.NumCPU(), MemTotal: "unknown", CPUName: "unknown", GoVersion: runtime.Version(), Commit: "unknown", Date: time.Now().UTC()}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				var kb int64
				if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err == nil {
					m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUName = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(b))
	}
	return m
}

// Document is bench/results.md.
func Document(res Results, table string, m Machine) string {
	var b strings.Builder
	b.WriteString("# Benchmark results\n\n")
	b.WriteString("Written by `make bench` (`go run ./internal/benchtable -o bench/results.md`); every figure of one run.\n\n")
	fmt.Fprintf(&b, "- machine: %d CPUs, %s RAM, %s\n", m.CPUs, m.MemTotal, m.CPUName)
	fmt.Fprintf(&b, "- Go: %s\n- commit: %s\n- date: %s\n", m.GoVersion, m.Commit, m.Date.Format("2006-01-02 15:04 MST"))
	if s, ok := res[scenario]; ok {
		fmt.Fprintf(&b, "- scenario: %.0f pods on one node, %.0f secrets each, poll interval %.0f s\n", s["pods"], s["secrets/pod"], s["poll-s"])
	}
	b.WriteString("\n")
	b.WriteString(table)
	b.WriteString("\nBaselines: the direct read is `vault/api` KV v2 from the same process on loopback; the tmpfs floor is a plain tmpfs mount plus a write of the same files by the harness; the per-pod baseline (`e2e/perpod`) logs every pod in to Vault with its own projected token and has it read its own secrets at the same poll interval (Secrets Store CSI driver + Vault provider, or Vault Agent), as goroutines of one process, a lower bound for its memory. Vault request counts come from Vault's file audit device, enabled only for each counting window.\n")
	return b.String()
}

func writeRow(w io.Writer, cells ...string) {
	fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
}
