package dist

import (
	"bytes"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"devid/agent/config"
)

const root = "../.."

// TestGeneratedFilesUpToDate fails when a file generated from the manifest
// or the config package differs from what is in the tree.
func TestGeneratedFilesUpToDate(t *testing.T) {
	files, err := Generate(root)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Errorf("%s: %v (run make dist-gen)", name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what agent/dist/manifest.toml and agent/config make (run make dist-gen)", name)
		}
	}
	// Nothing stale: every file in the generated directories is generated.
	for _, dir := range []string{"agent/dist/deb", "agent/dist/yocto", "agent/dist/buildroot", ManDir} {
		filepath.WalkDir(filepath.Join(root, dir), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			if _, ok := files[filepath.ToSlash(rel)]; !ok {
				t.Errorf("%s is not generated from the manifest any more: remove it", rel)
			}
			return nil
		})
	}
}

// TestNoticesUpToDate fails when the module graph changed (a module added,
// upgraded or dropped) and the notices file was not regenerated.
func TestNoticesUpToDate(t *testing.T) {
	want, err := Notices(root)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(root, NoticesPath))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date with the module graph (run make notices)", NoticesPath)
	}
}

func TestIdentifyLicences(t *testing.T) {
	for text, want := range map[string][]string{
		"Apache License\nVersion 2.0, January 2004":                                       {"Apache-2.0"},
		"Permission is hereby granted, free of charge, to any person":                     {"MIT"},
		"Redistribution and use in source and binary forms ... Neither the name of":       {"BSD-3-Clause"},
		"Redistribution and use in source and binary forms, with or without modification": {"BSD-2-Clause"},
		"Eclipse Public License - v 2.0 ... and Eclipse Distribution License v1.0":        {"EPL-2.0", "BSD-3-Clause"},
		"All rights reserved; ask us":                                                     nil,
	} {
		if got := identify(text); !slices.Equal(got, want) {
			t.Errorf("identify(%q) = %v, want %v", text, got, want)
		}
	}
}

// TestConfigTemplate: the template is valid as shipped, every key of the
// config is in it, and uncommenting every key gives exactly the defaults.
func TestConfigTemplate(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "agent/dist/config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.Parse(b); err != nil {
		t.Fatalf("the template as shipped does not pass config check: %v", err)
	}
	keyLine := regexp.MustCompile(`^#([a-z_]+ = .*)$`)
	var uncommented []string
	for _, line := range strings.Split(string(b), "\n") {
		if m := keyLine.FindStringSubmatch(line); m != nil {
			line = m[1]
		}
		uncommented = append(uncommented, line)
	}
	doc := []byte(strings.Join(uncommented, "\n"))
	got, err := config.Parse(doc)
	if err != nil {
		t.Fatalf("the template with every key uncommented is invalid: %v", err)
	}
	if want := config.Default(); !reflect.DeepEqual(got, want) {
		t.Errorf("uncommented template != config.Default():\n got %+v\nwant %+v", got, want)
	}
	// Every key the config has (as it marshals) is present.
	var full, tmpl map[string]any
	def, _ := config.Default().TOML()
	if err := toml.Unmarshal(def, &full); err != nil {
		t.Fatal(err)
	}
	if err := toml.Unmarshal(doc, &tmpl); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys("", full) {
		if !slices.Contains(keys("", tmpl), k) && !strings.HasPrefix(k, "network.resolve") {
			t.Errorf("config key %s is missing from the template", k)
		}
	}
}

func keys(prefix string, m map[string]any) []string {
	var out []string
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok && len(sub) > 0 {
			out = append(out, keys(prefix+k+".", sub)...)
			continue
		}
		out = append(out, prefix+k)
	}
	return out
}

// installed is one file an image recipe installs: where, and with what
// mode and owners.
type installed struct{ Dst, Mode, Owner string }

func manifestImageFiles(t *testing.T) []installed {
	m, err := LoadManifest(root)
	if err != nil {
		t.Fatal(err)
	}
	var out []installed
	for _, f := range m.imageFiles("devid-agent") {
		out = append(out, installed{strings.TrimSuffix(f.Dst, ".gz"), f.Mode, f.Owner + ":" + f.Group})
	}
	for _, d := range m.DirsOf("devid-agent") {
		out = append(out, installed{d.Path + "/", d.Mode, d.Owner + ":" + d.Group})
	}
	slices.SortFunc(out, func(a, b installed) int { return strings.Compare(a.Dst, b.Dst) })
	return out
}

// TestYoctoRecipeInstallsManifestFiles reads the recipe's do_install as a
// person would and checks it installs exactly the manifest's files.
func TestYoctoRecipeInstallsManifestFiles(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "agent/dist/yocto/meta-devid/recipes-devid/devid-agent/devid-agent.bb"))
	if err != nil {
		t.Fatal(err)
	}
	installRE := regexp.MustCompile(`install -m (0[0-7]{3}) \$\{WORKDIR\}/\S+ \$\{D\}(\S+?);?$`)
	dirRE := regexp.MustCompile(`^install -d -m (0[0-7]{3}) \$\{D\}(\S+)$`)
	chownRE := regexp.MustCompile(`^chown (\S+) \$\{D\}(\S+)$`)
	got := map[string]*installed{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(line), "; fi"))
		if m := installRE.FindStringSubmatch(line); m != nil {
			dst := YoctoDirBack(path.Dir(m[2])) + "/" + path.Base(m[2])
			got[dst] = &installed{dst, m[1], "root:root"}
		} else if m := dirRE.FindStringSubmatch(line); m != nil {
			dst := YoctoDirBack(m[2]) + "/"
			got[dst] = &installed{dst, m[1], "root:root"}
		} else if m := chownRE.FindStringSubmatch(line); m != nil {
			dst := YoctoDirBack(path.Dir(m[2])) + "/" + path.Base(m[2])
			if i, ok := got[dst]; ok {
				i.Owner = m[1]
			} else if i, ok := got[dst+"/"]; ok {
				i.Owner = m[1]
			} else {
				t.Errorf("recipe chowns %s, which it does not install", dst)
			}
		}
	}
	compareInstalled(t, "meta-devid recipe", got, manifestImageFiles(t))
}

// TestBuildrootPackageInstallsManifestFiles does the same for the
// Buildroot package.
func TestBuildrootPackageInstallsManifestFiles(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "agent/dist/buildroot/package/devid-agent/devid-agent.mk"))
	if err != nil {
		t.Fatal(err)
	}
	installRE := regexp.MustCompile(`\$\(INSTALL\) -D -m (0[0-7]{3}) \$\(@D\)/\S+ \$\(TARGET_DIR\)(\S+?);?$`)
	permRE := regexp.MustCompile(`^(/\S+) ([fd]) (0[0-7]{3}) (\S+) (\S+) - - - - -$`)
	got := map[string]*installed{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(line), "; fi"))
		if m := installRE.FindStringSubmatch(line); m != nil {
			got[m[2]] = &installed{m[2], m[1], "root:root"}
		} else if m := permRE.FindStringSubmatch(line); m != nil {
			dst := m[1]
			if m[2] == "d" {
				dst += "/"
				got[dst] = &installed{dst, m[3], "root:root"}
			}
			i, ok := got[dst]
			if !ok {
				t.Errorf("buildroot permissions name %s, which it does not install", dst)
				continue
			}
			i.Mode, i.Owner = m[3], m[4]+":"+m[5]
		}
	}
	compareInstalled(t, "buildroot package", got, manifestImageFiles(t))
}

func compareInstalled(t *testing.T, what string, got map[string]*installed, want []installed) {
	t.Helper()
	var list []installed
	for _, i := range got {
		list = append(list, *i)
	}
	slices.SortFunc(list, func(a, b installed) int { return strings.Compare(a.Dst, b.Dst) })
	if !slices.Equal(list, want) {
		t.Errorf("%s installs\n  %v\nthe manifest says\n  %v", what, list, want)
	}
}

// TestUnitMatchesManifest: the unit runs the binary the package installs,
// reads the config it installs, and may write the state directory.
func TestUnitMatchesManifest(t *testing.T) {
	m, err := LoadManifest(root)
	if err != nil {
		t.Fatal(err)
	}
	unit, _ := m.FileOfKind("devid-agent", "unit")
	bin, _ := m.FileOfKind("devid-agent", "binary")
	cfg, _ := m.FileOfKind("devid-agent", "config")
	b, err := os.ReadFile(filepath.Join(root, unit.Src))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, want := range []string{
		"ExecStart=" + bin.Dst + " run --config " + cfg.Dst,
		"ReadWritePaths=" + config.Default().StateDir,
		"User=" + m.User.Name,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("%s lacks %q", unit.Src, want)
		}
	}
}

func TestManifestRejectsMistakes(t *testing.T) {
	for name, m := range map[string]Manifest{
		"unknown package": {Packages: []Package{{Name: "a"}}, Files: []File{{Package: "b", Dst: "/x", Mode: "0644", Kind: "doc"}}},
		"bad mode":        {Packages: []Package{{Name: "a"}}, Files: []File{{Package: "a", Dst: "/x", Mode: "644", Kind: "doc"}}},
		"relative dst":    {Packages: []Package{{Name: "a"}}, Files: []File{{Package: "a", Dst: "x", Mode: "0644", Kind: "doc"}}},
		"twice":           {Packages: []Package{{Name: "a"}}, Files: []File{{Package: "a", Dst: "/x", Mode: "0644", Kind: "doc"}, {Package: "a", Dst: "/x", Mode: "0644", Kind: "doc"}}},
		"override reason": {Packages: []Package{{Name: "a", LintianOverride: []Override{{Tag: "t"}}}}},
	} {
		if err := m.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
