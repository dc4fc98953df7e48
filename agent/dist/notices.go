package dist

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// NoticesPath is the third-party notices file, relative to the root.
const NoticesPath = "agent/dist/third-party-notices.txt"

// Binaries are the shipped commands, by package name.
var Binaries = map[string]string{
	"devid-agent": "./agent/cmd/devid-agent",
	"devid-jig":   "./enroll/cmd/devid-jig",
	"devid-sim":   "./simulator/cmd/devid-sim",
}

// module is one third-party module linked into a shipped binary.
type module struct {
	Path, Version, Dir string
	UsedBy             []string
	License            string // SPDX expression
	Texts              []licenseText
}

type licenseText struct{ Name, Text string }

// Notices lists every module linked into a shipped binary (go list -deps
// over the module cache: no network), with its version, its licence as
// found in its LICENSE file, and that file's text. The Go standard library
// comes first. A module whose licence cannot be identified is an error: it
// must be looked at by a person before it ships.
func Notices(root string) ([]byte, error) {
	mods := map[string]*module{}
	names := make([]string, 0, len(Binaries))
	for name := range Binaries {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		cmd := exec.Command("go", "list", "-mod=readonly", "-deps", "-f", "{{with .Module}}{{.Path}}\t{{.Version}}\t{{.Dir}}{{end}}", Binaries[name])
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=readonly", "GOOS=linux", "CGO_ENABLED=0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("go list %s: %v: %s", Binaries[name], err, stderr.String())
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Split(sc.Text(), "\t")
			if len(f) != 3 || f[0] == "devid" {
				continue
			}
			m := mods[f[0]]
			if m == nil {
				m = &module{Path: f[0], Version: f[1], Dir: f[2]}
				mods[f[0]] = m
			}
			if !slices.Contains(m.UsedBy, name) {
				m.UsedBy = append(m.UsedBy, name)
			}
		}
	}
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOROOT: %w", err)
	}
	list := []*module{{Path: "Go standard library and runtime", Version: "(the toolchain's)", Dir: strings.TrimSpace(string(goroot)), UsedBy: names}}
	paths := make([]string, 0, len(mods))
	for p := range mods {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		list = append(list, mods[p])
	}
	for _, m := range list {
		if err := m.readLicense(); err != nil {
			return nil, err
		}
	}

	var b bytes.Buffer
	b.WriteString("Third-party software in devid-agent, devid-jig and devid-sim\n")
	b.WriteString("==============================================================\n\n")
	b.WriteString("devid itself is under the Apache License 2.0 (LICENSE). Its binaries are\n")
	b.WriteString("statically linked and contain the Go modules below, each under its own\n")
	b.WriteString("licence. Generated from the module graph by \"make notices\"; do not edit.\n\n")
	fmt.Fprintf(&b, "%-40s %-36s %-24s %s\n", "module", "version", "licence", "linked into")
	for _, m := range list {
		fmt.Fprintf(&b, "%-40s %-36s %-24s %s\n", m.Path, m.Version, m.License, strings.Join(m.UsedBy, ", "))
	}
	for _, m := range list {
		for _, t := range m.Texts {
			fmt.Fprintf(&b, "\n\n%s\n%s %s: %s\n%s\n\n", strings.Repeat("=", 78), m.Path, m.Version, t.Name, strings.Repeat("=", 78))
			b.WriteString(strings.TrimRight(t.Text, "\n \t"))
			b.WriteString("\n")
		}
	}
	return b.Bytes(), nil
}

// licenseFiles are the names a module's licence and notice go by.
var licenseFiles = []string{"LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE", "COPYING", "NOTICE", "NOTICE.md", "NOTICE.txt", "edl-v10", "epl-v20"}

func (m *module) readLicense() error {
	var ids []string
	for _, name := range licenseFiles {
		b, err := os.ReadFile(filepath.Join(m.Dir, name))
		if err != nil {
			continue
		}
		text := strings.ReplaceAll(string(b), "\r\n", "\n")
		m.Texts = append(m.Texts, licenseText{name, text})
		if strings.HasPrefix(name, "NOTICE") {
			continue
		}
		for _, id := range identify(text) {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	if len(ids) == 0 {
		return fmt.Errorf("notices: no licence identified for %s %s in %s (look at it, then teach identify)", m.Path, m.Version, m.Dir)
	}
	m.License = strings.Join(ids, " OR ")
	return nil
}

// identify names the licences a licence file's text carries, by phrases
// each licence has and the others lack.
func identify(text string) []string {
	t := strings.Join(strings.Fields(text), " ")
	var ids []string
	has := func(s string) bool { return strings.Contains(t, s) }
	switch {
	case has("Apache License") && has("Version 2.0"):
		ids = append(ids, "Apache-2.0")
	case has("Permission is hereby granted, free of charge"):
		ids = append(ids, "MIT")
	case has("Mozilla Public License") && has("2.0"):
		ids = append(ids, "MPL-2.0")
	case has("Redistribution and use in source and binary forms") && has("Neither the name"):
		ids = append(ids, "BSD-3-Clause")
	case has("Redistribution and use in source and binary forms"):
		ids = append(ids, "BSD-2-Clause")
	}
	if has("Eclipse Public License - v 2.0") || has("Eclipse Public License v2.0") || has("Eclipse Public License 2.0") {
		ids = append(ids, "EPL-2.0")
	}
	if has("Eclipse Distribution License - v 1.0") || has("Eclipse Distribution License v1.0") {
		ids = append(ids, "BSD-3-Clause")
	}
	return ids
}
