// Command prom checks Keywarden's Prometheus rule file and Grafana dashboard with Prometheus's
// own parsers and prints every metric name they reference, one per line, sorted.
//
//	go run . ../../../deploy/helm/keywarden/files/prometheus-rules.yaml ../../../deploy/helm/keywarden/files/grafana-dashboard.json
//
// It exits 1 with a message naming the file, panel and expression on any parse error. The
// e2e test (e2e/metrics_test.go) checks that every printed name exists on a real daemon's
// /metrics.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) != 2 {
		fmt.Fprintln(stderr, "usage: prom RULES.yaml DASHBOARD.json")
		return 2
	}
	names := map[string]bool{}
	if err := checkRules(args[0], names); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := checkDashboard(args[1], names); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, n := range slices.Sorted(maps.Keys(names)) {
		fmt.Fprintln(stdout, n)
	}
	return 0
}

// checkRules parses and validates the rule file (rulefmt checks the PromQL, names, labels
// and templates) and collects the metric names of every expression.
func checkRules(path string, names map[string]bool) error {
	// Unknown fields are errors; names must be classic (legacy) Prometheus names.
	groups, errs := rulefmt.ParseFile(path, false, model.LegacyValidation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		return errors.Join(errs...) // each names the file (and line, where known)
	}
	if len(groups.Groups) == 0 {
		return fmt.Errorf("%s: no rule groups", path)
	}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			name := r.Alert
			if name == "" {
				name = r.Record
			}
			if r.Alert != "" {
				if r.For == 0 {
					return fmt.Errorf("%s: alert %s: no `for:`", path, name)
				}
				for _, k := range []string{"summary", "description", "runbook_url"} {
					if r.Annotations[k] == "" {
						return fmt.Errorf("%s: alert %s: no %s annotation", path, name, k)
					}
				}
				if r.Labels["severity"] == "" {
					return fmt.Errorf("%s: alert %s: no severity label", path, name)
				}
			}
			if err := collect(r.Expr, names); err != nil {
				return fmt.Errorf("%s: rule %s: %w", path, name, err)
			}
		}
	}
	return nil
}

// grafanaVars are stand-ins for Grafana's variables that make an expression valid PromQL.
// Longer names first, so $__rate_interval is not read as $__rate followed by text.
var grafanaVars = strings.NewReplacer(
	"${__rate_interval}", "1m", "$__rate_interval", "1m",
	"${__interval}", "1m", "$__interval", "1m",
	"${__range}", "1h", "$__range", "1h",
	"${datasource}", "ds", "$datasource", "ds",
	"${instance}", "instance", "$instance", "instance",
	"${node}", "node", "$node", "node",
	"${job}", "job", "$job", "job",
)

type panel struct {
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

// checkDashboard parses every panel target's expression (nested rows included).
func checkDashboard(path string, names map[string]bool) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var d struct {
		Title  string  `json:"title"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	exprs := 0
	var walk func(ps []panel) error
	walk = func(ps []panel) error {
		for _, p := range ps {
			for _, t := range p.Targets {
				if strings.TrimSpace(t.Expr) == "" {
					return fmt.Errorf("%s: panel %q target %s: empty expr", path, p.Title, t.RefID)
				}
				exprs++
				if err := collect(grafanaVars.Replace(t.Expr), names); err != nil {
					return fmt.Errorf("%s: panel %q target %s: %w", path, p.Title, t.RefID, err)
				}
			}
			if err := walk(p.Panels); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(d.Panels); err != nil {
		return err
	}
	if exprs == 0 {
		return fmt.Errorf("%s: no panel has a target expression", path)
	}
	return nil
}

// collect parses expr and adds the metric name of every vector selector to names.
func collect(expr string, names map[string]bool) error {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return fmt.Errorf("%q: %w", expr, err)
	}
	var missing error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			missing = fmt.Errorf("%q: selector %s has no fixed metric name", expr, vs)
			return nil
		}
		names[name] = true
		return nil
	})
	return missing
}
