package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	defaultRepository = "ghcr.io/keywarden/keywarden"
	sourceURL         = "https://github.com/keywarden/keywarden"

	// Paths inside the image.
	binaryPath = "/usr/bin/keywarden"
	sbomPath   = "/usr/share/doc/keywarden/sbom.spdx.json"
	configPath = "/etc/keywarden/config.yaml"

	// nonroot is the user the daemon runs as unless the chart asks for root (only the
	// privileged CSI container needs it, to mount tmpfs). 65532 is the distroless convention.
	nonrootID = 65532

	// refNameAnnotation names the image inside the OCI layout's index.json.
	refNameAnnotation = "org.opencontainers.image.ref.name"
)

// Config is what Build needs. The caller has parsed and checked the command line.
type Config struct {
	// Binary is the path of the keywarden binary: ELF, statically linked, GOOS=linux.
	Binary string
	// Version is the image tag, the version label and the SBOM's package version. It must be
	// a valid tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
	Version string
	// Revision is the source commit, for the revision label; empty leaves the label empty.
	Revision string
	// Arch is the image's GOARCH. Empty means the binary's; otherwise it must match it.
	Arch string
	// Repository is the repository part of the tarball's tag; default defaultRepository.
	Repository string
	// Created is SOURCE_DATE_EPOCH: the image's created time and every mtime in the layer.
	Created time.Time
	// OutDir receives oci/, keywarden-<version>.tar and sbom.spdx.json. Build replaces
	// OutDir/oci and those files; it leaves anything else there alone.
	OutDir string
	// GzipLevel is the compress/gzip level of the layer, 1 to 9; 0 means
	// gzip.DefaultCompression. The digest depends on it, so keep it fixed for a release.
	// Tests use gzip.BestSpeed: compress/flate is about ten times slower under -race.
	GzipLevel int
}

// Result says what Build wrote.
type Result struct {
	Digest   v1.Hash // manifest digest of the image
	Tag      string  // repository:version, the tarball's tag
	Platform string  // os/arch
	Layout   string  // OCI image layout directory
	Tarball  string  // docker-loadable tarball (docker load / podman load)
	SBOM     string  // SPDX JSON, the same bytes as inside the image
}

// Build makes the image from cfg.Binary and writes it as an OCI layout and a tarball.
func Build(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Binary == "" {
		return Result{}, errors.New("binary is required: the path of a static linux keywarden build")
	}
	if cfg.Version == "" {
		return Result{}, errors.New("version is required")
	}
	if cfg.OutDir == "" {
		return Result{}, errors.New("output directory is required")
	}
	if cfg.Created.IsZero() {
		return Result{}, errors.New("created time (SOURCE_DATE_EPOCH) is required")
	}
	if cfg.Repository == "" {
		cfg.Repository = defaultRepository
	}
	created := cfg.Created.UTC().Truncate(time.Second)
	tag, err := name.NewTag(cfg.Repository+":"+cfg.Version, name.StrictValidation)
	if err != nil {
		return Result{}, fmt.Errorf("version %q and repository %q do not make an image tag: %w", cfg.Version, cfg.Repository, err)
	}

	bin, err := os.ReadFile(cfg.Binary)
	if err != nil {
		return Result{}, fmt.Errorf("read binary: %w", err)
	}
	info, err := inspectBinary(cfg.Binary, bin)
	if err != nil {
		return Result{}, err
	}
	arch := cfg.Arch
	if arch == "" {
		arch = info.goarch
	}
	if arch != info.goarch {
		return Result{}, fmt.Errorf("binary %s is built for GOARCH=%s, not %s", cfg.Binary, info.goarch, arch)
	}

	sbom, err := makeSBOM(info.build, bin, cfg.Version, created)
	if err != nil {
		return Result{}, err
	}
	layerTar, err := makeLayer(created, bin, sbom)
	if err != nil {
		return Result{}, err
	}
	level := cfg.GzipLevel
	if level == 0 {
		level = gzip.DefaultCompression
	}
	if level != gzip.DefaultCompression && (level < gzip.BestSpeed || level > gzip.BestCompression) {
		return Result{}, fmt.Errorf("gzip level %d is not between %d and %d", level, gzip.BestSpeed, gzip.BestCompression)
	}
	layerGz, err := gzipDeterministic(layerTar, level)
	if err != nil {
		return Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}

	img, err := assemble(newLayer(layerTar, layerGz), cfg, arch, info, created)
	if err != nil {
		return Result{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return Result{}, fmt.Errorf("image digest: %w", err)
	}

	res := Result{
		Digest:   digest,
		Tag:      tag.String(),
		Platform: "linux/" + arch,
		Layout:   filepath.Join(cfg.OutDir, "oci"),
		Tarball:  filepath.Join(cfg.OutDir, "keywarden-"+cfg.Version+".tar"),
		SBOM:     filepath.Join(cfg.OutDir, "sbom.spdx.json"),
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return Result{}, fmt.Errorf("create output directory: %w", err)
	}
	// A layout is append-only: writing into an old one would leave earlier images in its
	// index.json, so start from an empty one each time.
	if err := os.RemoveAll(res.Layout); err != nil {
		return Result{}, fmt.Errorf("remove old layout: %w", err)
	}
	p, err := layout.Write(res.Layout, empty.Index)
	if err != nil {
		return Result{}, fmt.Errorf("write OCI layout: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: cfg.Version})); err != nil {
		return Result{}, fmt.Errorf("write OCI layout: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	if err := tarball.WriteToFile(res.Tarball, tag, img); err != nil {
		return Result{}, fmt.Errorf("write tarball: %w", err)
	}
	if err := os.WriteFile(res.SBOM, sbom, 0o644); err != nil {
		return Result{}, fmt.Errorf("write SBOM: %w", err)
	}
	return res, nil
}

// assemble puts the one layer on scratch and sets the config. The media types are OCI
// throughout (go-containerregistry's empty image starts with Docker's).
func assemble(layer v1.Layer, cfg Config, arch string, info binaryInfo, created time.Time) (v1.Image, error) {
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "keywarden deploy/image: " + binaryPath + " (" + info.goVersion + ") and its SBOM",
			Comment:   "FROM scratch",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	labels := map[string]string{
		"org.opencontainers.image.title":       "keywarden",
		"org.opencontainers.image.description": "Keywarden: node-level secrets broker for Kubernetes (CSI volumes and a gRPC API backed by HashiCorp Vault)",
		"org.opencontainers.image.source":      sourceURL,
		"org.opencontainers.image.url":         sourceURL,
		"org.opencontainers.image.version":     cfg.Version,
		"org.opencontainers.image.revision":    cfg.Revision,
		"org.opencontainers.image.created":     created.Format(time.RFC3339),
		"org.opencontainers.image.licenses":    "Apache-2.0",
	}
	cf.Created = v1.Time{Time: created}
	cf.Author = ""
	cf.OS = "linux"
	cf.Architecture = arch
	cf.Variant = info.variant
	cf.Config = v1.Config{
		Entrypoint: []string{binaryPath},
		Cmd:        []string{"serve", "--config", configPath},
		User:       fmt.Sprintf("%d:%d", nonrootID, nonrootID),
		Env:        []string{"PATH=/usr/bin"},
		WorkingDir: "/",
		Labels:     labels,
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	// The same labels as manifest annotations: registries show those without pulling the config.
	annotated, ok := mutate.Annotations(img, labels).(v1.Image)
	if !ok {
		return nil, errors.New("annotate manifest: not an image")
	}
	return annotated, nil
}

// memLayer is the layer with both forms in memory and their digests computed once.
// (tarball.LayerFromOpener would gunzip the layer again to find its diff ID.)
type memLayer struct {
	uncompressed, compressed []byte
	diffID, digest           v1.Hash
}

var _ v1.Layer = (*memLayer)(nil)

func newLayer(uncompressed, compressed []byte) *memLayer {
	sum := func(b []byte) v1.Hash {
		h := sha256.Sum256(b)
		return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h[:])}
	}
	return &memLayer{
		uncompressed: uncompressed, compressed: compressed,
		diffID: sum(uncompressed), digest: sum(compressed),
	}
}

func (l *memLayer) Digest() (v1.Hash, error) { return l.digest, nil }
func (l *memLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *memLayer) Size() (int64, error)     { return int64(len(l.compressed)), nil }
func (l *memLayer) MediaType() (types.MediaType, error) {
	return types.OCILayer, nil
}
func (l *memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.compressed)), nil
}
func (l *memLayer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.uncompressed)), nil
}
