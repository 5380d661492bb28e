package chaos

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Environment of a campaign run.
const (
	// TrialsEnv overrides every campaign's trial count (`make chaos` sets it to 1000). Unset,
	// each campaign runs its short default, small enough for `make test`.
	TrialsEnv = "KEYWARDEN_CHAOS_TRIALS"
	// LongEnv, set to "1", selects the long settings of campaigns that are not counted in
	// trials (25 pods and a 10-minute Vault outage instead of 5 pods and a few polls).
	LongEnv = "KEYWARDEN_CHAOS_LONG"
	// ReportEnv names a file each campaign appends its summary line to; `make chaos` prints
	// the table from it.
	ReportEnv = "KEYWARDEN_CHAOS_REPORT"
	// Marker starts every summary line in the test log.
	Marker = "CHAOS"
)

// Trials returns the trial count from TrialsEnv, or def when it is unset.
func Trials(tb testing.TB, def int) int {
	tb.Helper()
	v := os.Getenv(TrialsEnv)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		tb.Fatalf("%s=%q: want a positive number", TrialsEnv, v)
	}
	return n
}

// Long reports whether the long settings are asked for.
func Long() bool { return os.Getenv(LongEnv) == "1" }

// Result is what one campaign measured. Every count is of events the campaign checked, not
// estimated: Losses counts acknowledged writes (or volumes) missing or wrong after recovery,
// Torn volumes holding files of two versions, WrongAllows answers that served what should
// have been refused (an expired value, a denied identity), Orphans leases left in Vault.
type Result struct {
	Campaign    string
	Trials      int
	Faults      int
	Losses      int
	Torn        int
	WrongAllows int
	Orphans     int
	// Notes is free text for figures that do not fit the columns (recovery times, counts of
	// what the faults interrupted).
	Notes string
}

// Columns are the table's column names, in the order of Result.line.
var Columns = []string{"campaign", "trials", "faults", "losses", "torn", "wrong allows", "orphaned leases", "notes"}

func (r Result) line() string {
	return strings.Join([]string{Marker, r.Campaign, strconv.Itoa(r.Trials), strconv.Itoa(r.Faults), strconv.Itoa(r.Losses),
		strconv.Itoa(r.Torn), strconv.Itoa(r.WrongAllows), strconv.Itoa(r.Orphans), strings.ReplaceAll(r.Notes, "\t", " ")}, "\t")
}

// Report logs r as one tab-separated line starting with Marker and appends it to the file
// ReportEnv names, if any. It records figures; failing on them is the campaign's job.
func Report(tb testing.TB, r Result) {
	tb.Helper()
	tb.Log(r.line())
	path := os.Getenv(ReportEnv)
	if path == "" {
		return
	}
	// O_APPEND: campaigns in several test binaries may report at the same time.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		tb.Errorf("chaos report: %v", err)
		return
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s\t%s\n", r.line(), time.Now().UTC().Format(time.RFC3339)); err != nil {
		tb.Errorf("chaos report: %v", err)
	}
}
