package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Results are the figures of one `go test -bench` output: benchmark name (without the
// -GOMAXPROCS suffix) → unit → value. A benchmark reported twice keeps its last line.
type Results map[string]map[string]float64

// maxLine bounds one line of input.
const maxLine = 1 << 20

// Parse reads `go test -bench` output and keeps the result lines: "BenchmarkName-N <iterations>
// (<value> <unit>)...". Other lines (logs, PASS, ok) are skipped. A result line that does not
// parse is an error naming its line number.
func Parse(r io.Reader) (Results, error) {
	res := Results{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue // the name alone: a benchmark that logs before its result line
		}
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			continue // "BenchmarkX  some log text": not a result line
		}
		if len(f)%2 != 0 {
			return nil, fmt.Errorf("line %d: a value without a unit", n)
		}
		name := trimProcs(f[0])
		m := map[string]float64{}
		for i := 2; i < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("line %d: value %q of %s is not a finite number", n, f[i], name)
			}
			m[f[i+1]] = v
		}
		res[name] = m
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read benchmark output: %w", err)
	}
	return res, nil
}

// trimProcs drops the "-N" GOMAXPROCS suffix go test appends to a benchmark's name.
func trimProcs(name string) string {
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return name
	}
	if _, err := strconv.Atoi(name[i+1:]); err != nil {
		return name
	}
	return name[:i]
}
