package agent_test

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// goList runs `go list -deps` on pattern and returns every package with
// its direct imports (non-test code only).
func goList(t *testing.T, pattern string) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Imports,Doc,Name,Dir,Module", pattern)
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pattern, err)
	}
	pkgs := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs[p.ImportPath] = p.Imports
	}
	return pkgs
}

func ours(path string) bool { return path == "devid" || strings.HasPrefix(path, "devid/") }

// under reports whether path is the package root or one below it.
func under(path, root string) bool { return path == root || strings.HasPrefix(path, root+"/") }

// station is the factory station's code: it runs on the jig PC, never on
// a device.
func station(path string) bool {
	return under(path, "devid/enroll/station") || path == "devid/enroll/cmd/devid-jig"
}

// deviceSide is code that runs on the device: the agent, and enroll
// except the station.
func deviceSide(path string) bool {
	return under(path, "devid/agent") || (under(path, "devid/enroll") && !station(path))
}

// TestLayering enforces the dependency direction of
// docs/architecture.md. Each rule names why it exists.
func TestLayering(t *testing.T) {
	all := goList(t, "devid/...")
	for pkg, imports := range all {
		if !ours(pkg) {
			continue
		}
		for _, imp := range imports {
			if !ours(imp) {
				continue
			}
			switch {
			case strings.HasPrefix(pkg, "devid/hal") && !strings.HasPrefix(imp, "devid/hal"):
				t.Errorf("%s imports %s: hal is the bottom layer and imports no other devid package", pkg, imp)
			case strings.HasPrefix(pkg, "devid/dps") && !strings.HasPrefix(imp, "devid/dps"):
				t.Errorf("%s imports %s: dps takes a crypto.Signer and must be usable on its own", pkg, imp)
			case strings.HasPrefix(pkg, "devid/simulator") && (strings.HasPrefix(imp, "devid/dps") || strings.HasPrefix(imp, "devid/agent")):
				t.Errorf("%s imports %s: the simulator is an independent implementation of the service", pkg, imp)
			case strings.HasPrefix(pkg, "devid/enroll") && (strings.HasPrefix(imp, "devid/agent") || strings.HasPrefix(imp, "devid/simulator")):
				t.Errorf("%s imports %s: enroll sits below agent and never links the simulator", pkg, imp)
			case strings.HasPrefix(pkg, "devid/enroll") && strings.HasPrefix(imp, "devid/dps"):
				t.Errorf("%s imports %s: enroll is the device identity (keys, CSRs, certificates) and knows no MQTT client; issuers that speak to DPS or the hub live in agent/renewal", pkg, imp)
			case deviceSide(pkg) && station(imp):
				t.Errorf("%s imports %s: the station (jig, CA) runs on the jig PC and builds on the device side, never the reverse", pkg, imp)
			}
		}
	}
}

// TestAgentBinaryDeps checks what the shipped binary links.
func TestAgentBinaryDeps(t *testing.T) {
	deps := goList(t, "devid/agent/cmd/devid-agent")
	banned := map[string]string{
		"testing":        "test code must not ship on devices",
		"net/http/pprof": "no debug endpoints on devices",
	}
	for pkg := range deps {
		if why, bad := banned[pkg]; bad {
			t.Errorf("devid-agent links %s: %s", pkg, why)
		}
		if strings.HasPrefix(pkg, "devid/simulator") {
			t.Errorf("devid-agent links %s: the simulator is for tests and demos only", pkg)
		}
		if station(pkg) {
			t.Errorf("devid-agent links %s: the factory station (jig, CA) never ships on devices", pkg)
		}
		if strings.HasPrefix(pkg, "github.com/mochi-mqtt/") {
			t.Errorf("devid-agent links %s: the broker belongs to the simulator", pkg)
		}
	}
}

// TestPackageDocs requires a package doc comment in every package.
func TestPackageDocs(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}\t{{.Name}}\t{{.Doc}}", "devid/...")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.SplitN(line, "\t", 3)
		if len(f) < 3 || strings.TrimSpace(f[2]) == "" {
			t.Errorf("package %s has no package doc comment", f[0])
		}
	}
}
