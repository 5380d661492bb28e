package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv("SOURCE_DATE_EPOCH"), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run parses the command line, builds the image and prints its manifest digest on stdout.
// epochEnv is $SOURCE_DATE_EPOCH, the default for -source-date-epoch.
func run(ctx context.Context, args []string, epochEnv string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg   Config
		epoch string
	)
	fs.StringVar(&cfg.Binary, "binary", "", "static linux keywarden binary to put in the image (required)")
	fs.StringVar(&cfg.Version, "version", "", "image version: the tag and the version label (required)")
	fs.StringVar(&cfg.Revision, "revision", "", "source revision (git commit) for the revision label")
	fs.StringVar(&cfg.Arch, "arch", "", "GOARCH of the image; must match the binary (default: the binary's)")
	fs.StringVar(&cfg.Repository, "repository", defaultRepository, "repository for the tarball's tag")
	fs.StringVar(&cfg.OutDir, "out", "dist/image", "output directory")
	fs.StringVar(&epoch, "source-date-epoch", epochEnv, "Unix time for every timestamp (default $SOURCE_DATE_EPOCH)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "image: unexpected arguments %q\n", fs.Args())
		return 2
	}
	created, err := parseSourceDateEpoch(epoch)
	if err != nil {
		fmt.Fprintf(stderr, "image: %v\n", err)
		return 2
	}
	cfg.Created = created

	res, err := Build(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "image: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "image: %s (%s)\n  layout  %s\n  tarball %s\n  sbom    %s\n",
		res.Tag, res.Platform, res.Layout, res.Tarball, res.SBOM)
	fmt.Fprintln(stdout, res.Digest)
	return 0
}

// maxEpoch is 9999-12-31T23:59:59Z: RFC 3339 (the config's created) has four-digit years.
const maxEpoch = 253402300799

// parseSourceDateEpoch reads SOURCE_DATE_EPOCH as defined by reproducible-builds.org: a
// decimal count of seconds since 1970 UTC. It is required: a build that silently used the
// wall clock would not be reproducible.
func parseSourceDateEpoch(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("SOURCE_DATE_EPOCH is not set: pass -source-date-epoch or set it (make uses the commit time)")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > maxEpoch {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q is not a Unix time in seconds between 0 and %d", s, int64(maxEpoch))
	}
	return time.Unix(n, 0).UTC(), nil
}
