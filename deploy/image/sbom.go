package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"runtime/debug"
	"strings"
	"time"
)

// The subset of SPDX 2.3 (https://spdx.github.io/spdx-spec/v2.3/) that an SBOM of a Go
// binary needs: one package per module compiled in, the toolchain, and who depends on whom.

type spdxDocument struct {
	SPDXVersion       string             `json:"spdxVersion"`
	DataLicense       string             `json:"dataLicense"`
	SPDXID            string             `json:"SPDXID"`
	Name              string             `json:"name"`
	DocumentNamespace string             `json:"documentNamespace"`
	CreationInfo      spdxCreationInfo   `json:"creationInfo"`
	Packages          []spdxPackage      `json:"packages"`
	Relationships     []spdxRelationship `json:"relationships"`
}

type spdxCreationInfo struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
	Comment  string   `json:"comment,omitempty"`
}

type spdxPackage struct {
	Name                  string         `json:"name"`
	SPDXID                string         `json:"SPDXID"`
	VersionInfo           string         `json:"versionInfo"`
	PackageFileName       string         `json:"packageFileName,omitempty"`
	Supplier              string         `json:"supplier"`
	DownloadLocation      string         `json:"downloadLocation"`
	FilesAnalyzed         bool           `json:"filesAnalyzed"`
	Checksums             []spdxChecksum `json:"checksums,omitempty"`
	LicenseConcluded      string         `json:"licenseConcluded"`
	LicenseDeclared       string         `json:"licenseDeclared"`
	CopyrightText         string         `json:"copyrightText"`
	Comment               string         `json:"comment,omitempty"`
	ExternalRefs          []spdxExtRef   `json:"externalRefs,omitempty"`
	PrimaryPackagePurpose string         `json:"primaryPackagePurpose"`
}

type spdxChecksum struct {
	Algorithm     string `json:"algorithm"`
	ChecksumValue string `json:"checksumValue"`
}

type spdxExtRef struct {
	ReferenceCategory string `json:"referenceCategory"`
	ReferenceType     string `json:"referenceType"`
	ReferenceLocator  string `json:"referenceLocator"`
}

type spdxRelationship struct {
	SPDXElementID      string `json:"spdxElementId"`
	RelationshipType   string `json:"relationshipType"`
	RelatedSPDXElement string `json:"relatedSpdxElement"`
}

const noAssertion = "NOASSERTION"

// makeSBOM describes the binary from its own build info, so the SBOM lists exactly what was
// linked in (not what go.mod requires for tools and tests). Everything in it is derived from
// the binary, the version and created, so it is as reproducible as they are.
func makeSBOM(bi *debug.BuildInfo, bin []byte, version string, created time.Time) ([]byte, error) {
	binSum := sha256.Sum256(bin)
	binHex := hex.EncodeToString(binSum[:])

	var settings []string
	for _, s := range bi.Settings {
		settings = append(settings, s.Key+"="+s.Value)
	}
	mainID := "SPDXRef-Package-keywarden"
	pkgs := []spdxPackage{{
		Name:             bi.Main.Path,
		SPDXID:           mainID,
		VersionInfo:      version,
		PackageFileName:  binaryPath,
		Supplier:         "Organization: Keywarden",
		DownloadLocation: "git+" + sourceURL,
		// The checksum is the binary's own: this package is the program in the image.
		Checksums:             []spdxChecksum{{Algorithm: "SHA256", ChecksumValue: binHex}},
		LicenseConcluded:      noAssertion,
		LicenseDeclared:       "Apache-2.0",
		CopyrightText:         noAssertion,
		Comment:               "command " + bi.Path + " built with " + bi.GoVersion + "; " + strings.Join(settings, " "),
		ExternalRefs:          []spdxExtRef{purl(bi.Main.Path, version)},
		PrimaryPackagePurpose: "APPLICATION",
	}, {
		Name:                  "stdlib",
		SPDXID:                "SPDXRef-Package-go-stdlib",
		VersionInfo:           bi.GoVersion,
		Supplier:              "Organization: Go",
		DownloadLocation:      "https://go.dev/dl/",
		LicenseConcluded:      noAssertion,
		LicenseDeclared:       "BSD-3-Clause",
		CopyrightText:         noAssertion,
		Comment:               "the Go toolchain and standard library the binary was built with",
		ExternalRefs:          []spdxExtRef{purl("stdlib", bi.GoVersion)},
		PrimaryPackagePurpose: "LIBRARY",
	}}
	rels := []spdxRelationship{
		{"SPDXRef-DOCUMENT", "DESCRIBES", mainID},
		{mainID, "DEPENDS_ON", "SPDXRef-Package-go-stdlib"},
	}
	for i, dep := range bi.Deps {
		m := dep
		if dep.Replace != nil {
			m = dep.Replace
		}
		p := spdxPackage{
			Name:                  m.Path,
			SPDXID:                fmt.Sprintf("SPDXRef-Package-go-module-%d-%s", i, spdxIDSafe(m.Path)),
			VersionInfo:           m.Version,
			Supplier:              noAssertion,
			DownloadLocation:      noAssertion,
			LicenseConcluded:      noAssertion,
			LicenseDeclared:       noAssertion,
			CopyrightText:         noAssertion,
			PrimaryPackagePurpose: "LIBRARY",
		}
		if p.VersionInfo == "" {
			p.VersionInfo = noAssertion // a replace with a local directory has no version
		}
		if m.Version != "" {
			p.ExternalRefs = []spdxExtRef{purl(m.Path, m.Version)}
		}
		if dep.Replace != nil {
			p.Comment = "replaces " + dep.Path + " " + dep.Version
		}
		// Go's h1: hash is SHA-256 (of the module's file list, as in go.sum); SPDX wants hex.
		// Syft and other Go SBOM tools record it the same way.
		if sum, ok := strings.CutPrefix(m.Sum, "h1:"); ok {
			if raw, err := base64.StdEncoding.DecodeString(sum); err == nil && len(raw) == sha256.Size {
				p.Checksums = []spdxChecksum{{Algorithm: "SHA256", ChecksumValue: hex.EncodeToString(raw)}}
			}
		}
		pkgs = append(pkgs, p)
		rels = append(rels, spdxRelationship{mainID, "DEPENDS_ON", p.SPDXID})
	}

	doc := spdxDocument{
		SPDXVersion: "SPDX-2.3",
		DataLicense: "CC0-1.0",
		SPDXID:      "SPDXRef-DOCUMENT",
		Name:        "keywarden-" + version,
		// Unique per binary and yet reproducible: no random UUID.
		DocumentNamespace: sourceURL + "/spdx/keywarden-" + url.PathEscape(version) + "-" + binHex,
		CreationInfo: spdxCreationInfo{
			Created:  created.UTC().Format(time.RFC3339),
			Creators: []string{"Organization: Keywarden", "Tool: keywarden-deploy-image"},
			Comment:  "generated from the Go build info of " + binaryPath,
		},
		Packages:      pkgs,
		Relationships: rels,
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("SBOM: %w", err)
	}
	return append(out, '\n'), nil
}

// purl is the package URL of a Go module (https://github.com/package-url/purl-spec):
// pkg:golang/<path>@<version>, each path segment and the version percent-encoded.
func purl(path, version string) spdxExtRef {
	segs := strings.Split(path, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return spdxExtRef{
		ReferenceCategory: "PACKAGE-MANAGER",
		ReferenceType:     "purl",
		ReferenceLocator:  "pkg:golang/" + strings.Join(segs, "/") + "@" + url.PathEscape(version),
	}
}

// spdxIDSafe maps a module path onto SPDX's identifier alphabet [A-Za-z0-9.-].
func spdxIDSafe(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		}
		return '-'
	}, s)
}
