package dist

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ManDir holds the man pages, generated from the binaries' command lines.
const ManDir = "agent/dist/man"

// cliDoc is a binary's command line as `BINARY help --json` prints it:
// each binary's command table, so that the page says what the binary
// does.
type cliDoc struct {
	Name        string `json:"name"`
	Section     int    `json:"section"`
	Summary     string `json:"summary"`
	Description string `json:"description"`
	Commands    []struct {
		Name    string `json:"name"`
		Args    string `json:"args"`
		Purpose string `json:"purpose"`
		Example string `json:"example"`
		Exit    string `json:"exit"`
		Flags   []struct {
			Name    string `json:"name"`
			Arg     string `json:"arg"`
			Usage   string `json:"usage"`
			Default string `json:"default"`
		} `json:"flags"`
	} `json:"commands"`
	Files       []cliItem `json:"files"`
	Environment []cliItem `json:"environment"`
}

type cliItem struct {
	Name    string `json:"name"`
	Meaning string `json:"meaning"`
}

// ManPages builds the shipped binaries for this machine, asks each for
// its command line (help --json) and returns the man pages by path
// relative to root.
func ManPages(root string) (map[string][]byte, error) {
	tmp, err := os.MkdirTemp("", "devid-man")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := BuildHostBinaries(root, tmp); err != nil {
		return nil, err
	}
	pages := map[string][]byte{}
	for _, n := range []string{"devid-agent", "devid-jig", "devid-sim"} {
		cmd := exec.Command(filepath.Join(tmp, n), "help", "--json")
		cmd.Env = []string{} // defaults that come from the environment (DEVID_SIM_CONTROL) stay out of the page
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("%s help --json: %w", n, err)
		}
		var d cliDoc
		if err := json.Unmarshal(out, &d); err != nil {
			return nil, fmt.Errorf("%s help --json: %w", n, err)
		}
		if d.Name != n || d.Section == 0 {
			return nil, fmt.Errorf("%s help --json: name %q section %d", n, d.Name, d.Section)
		}
		pages[fmt.Sprintf("%s/%s.%d", ManDir, n, d.Section)] = renderMan(d)
	}
	return pages, nil
}

// BuildHostBinaries builds the shipped binaries for this machine into dir;
// ldflags are passed to the linker.
func BuildHostBinaries(root, dir string, ldflags ...string) error {
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if len(ldflags) > 0 {
		args = append(args, "-ldflags", strings.Join(ldflags, " "))
	}
	for _, n := range []string{"devid-agent", "devid-jig", "devid-sim"} {
		args = append(args, Binaries[n])
	}
	build := exec.Command("go", args...)
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}

// roff escapes text for a man page: backslashes, hyphens (options must
// copy as ASCII hyphen-minus) and a control character at a line start.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			l = `\&` + l
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n")
}

// renderMan writes the man page of one binary.
func renderMan(d cliDoc) []byte {
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	manual := "User Commands"
	if d.Section == 8 {
		manual = "System Administration"
	}
	p(`.\" Generated from "%s help \-\-json" by "make dist-gen"; do not edit.`, d.Name)
	p(`.TH %s %d "" "devid" "%s"`, strings.ToUpper(d.Name), d.Section, manual)
	p(".SH NAME")
	p(`%s \- %s`, roff(d.Name), roff(d.Summary))
	p(".SH SYNOPSIS")
	for _, c := range d.Commands {
		p(".B %s", roff(d.Name+" "+c.Name))
		if c.Args != "" {
			p("%s", roff(c.Args))
		}
		p(".br")
	}
	p(".SH DESCRIPTION")
	p("%s", roff(d.Description))
	p(".SH COMMANDS")
	for _, c := range d.Commands {
		p(`.SS "%s"`, roff(c.Name))
		p("%s", roff(sentenceCase(c.Purpose)))
		p(".PP")
		p("Example:")
		p(".PP")
		p(".RS 4")
		p(".nf")
		p("%s", roff(c.Example))
		p(".fi")
		p(".RE")
		for _, f := range c.Flags {
			p(".TP")
			if f.Arg != "" {
				p(`.BI "\-\-%s " %s`, roff(f.Name), roff(f.Arg))
			} else {
				p(`.B \-\-%s`, roff(f.Name))
			}
			usage := f.Usage
			if f.Default != "" {
				usage += " (default: " + f.Default + ")"
			}
			p("%s", roff(usage))
		}
	}
	p(".SH EXIT STATUS")
	p("0 on success, 1 on failure (the reason is on standard error), 2 on a usage error.")
	p(".B help")
	p("and")
	p(`.B \-\-help`)
	p("print to standard output and exit 0.")
	for _, c := range d.Commands {
		if c.Exit != "" {
			p(".TP")
			p(".B %s", roff(c.Name))
			p("%s", roff(c.Exit))
		}
	}
	section := func(title string, items []cliItem) {
		if len(items) == 0 {
			return
		}
		p(".SH %s", title)
		for _, it := range items {
			p(".TP")
			p(".I %s", roff(it.Name))
			p("%s", roff(it.Meaning+"."))
		}
	}
	section("FILES", d.Files)
	section("ENVIRONMENT", d.Environment)
	p(".SH SEE ALSO")
	var see []string
	for _, o := range []string{"devid-agent(8)", "devid-jig(1)", "devid-sim(1)"} {
		if !strings.HasPrefix(o, d.Name+"(") {
			n, sec, _ := strings.Cut(strings.TrimSuffix(o, ")"), "(")
			see = append(see, fmt.Sprintf(".BR %s (%s)", roff(n), sec))
		}
	}
	p("%s", strings.Join(see, ",\n"))
	p("and the devid documentation in")
	p(".IR /usr/share/doc/%s .", roff(d.Name))
	return b.Bytes()
}

// sentenceCase makes a one-line purpose a sentence: capital, full stop.
func sentenceCase(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:] + "."
}
