package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"devid/hal/cmdline"
	"devid/simulator/simapi"
)

// verb is one control verb: it talks to the control plane of a running
// simulator (docs/simulator.md).
type verb struct {
	name    string
	args    string // synopsis after the name
	purpose string // one line
	example string
	flags   []string // the flags it reads besides --state and --control
	run     func(*invocation) error
}

var (
	enrollFlags = []string{"hub", "iothub", "policy", "credential-policy", "webhook", "disabled", "twin", "no-reprovision", "reset-data"}
	faultFlags  = []string{"scope", "device", "hub", "ops", "status", "retry-after", "delay-ms", "drop-after", "refuse-seconds", "count"}
)

// verbs are the control verbs, in the order help lists them.
var verbs = []verb{
	{"ready", "", "print the ready line (addresses, CA) of the running simulator",
		"devid-sim ready --state /tmp/sim", nil, verbReady},
	{"enroll-group", "ID --ca FILE [flags]", "create or replace an enrollment group whose devices chain to a CA",
		"devid-sim enroll-group line1 --ca factory-root.pem --state /tmp/sim", append([]string{"ca"}, enrollFlags...), verbEnrollGroup},
	{"enroll", "ID --cert FILE [--device-id ID] [flags]", "create or replace an individual enrollment for one device certificate",
		"devid-sim enroll board-1 --cert board-1.pem --state /tmp/sim", append([]string{"cert", "device-id"}, enrollFlags...), verbEnroll},
	{"unenroll-group", "ID", "delete an enrollment group",
		"devid-sim unenroll-group line1 --state /tmp/sim", nil, verbUnenroll},
	{"unenroll", "ID", "delete an individual enrollment",
		"devid-sim unenroll board-1 --state /tmp/sim", nil, verbUnenroll},
	{"disable", "(group|enrollment|registration|device) ID [--hub NAME]", "disable an enrollment group, enrollment, registration or hub device",
		"devid-sim disable device board-1 --state /tmp/sim", []string{"hub"}, verbSetStatus},
	{"enable", "(group|enrollment|registration|device) ID [--hub NAME]", "enable what disable disabled",
		"devid-sim enable device board-1 --state /tmp/sim", []string{"hub"}, verbSetStatus},
	{"registrations", "[GROUP]", "list registration states (of one enrollment group)",
		"devid-sim registrations line1 --state /tmp/sim", nil, verbRegistrations},
	{"devices", "[--hub NAME]", "list a hub's devices",
		"devid-sim devices --hub sim-hub-1 --state /tmp/sim", []string{"hub"}, verbDevices},
	{"delete-device", "ID [--hub NAME]", "delete a device from a hub",
		"devid-sim delete-device board-1 --state /tmp/sim", []string{"hub"}, verbDeleteDevice},
	{"twin", "ID [--hub NAME] [--desired JSON]", "print a device twin, or patch its desired properties",
		`devid-sim twin board-1 --desired '{"interval":60}' --state /tmp/sim`, []string{"hub", "desired"}, verbTwin},
	{"method", "ID NAME [--payload JSON] [--timeout S] [--hub NAME]", "invoke a direct method on a connected device and print its answer",
		`devid-sim method board-1 reboot --payload '{}' --state /tmp/sim`, []string{"hub", "payload", "timeout"}, verbMethod},
	{"c2d", "ID TEXT [--prop K=V]... [--hub NAME]", "send a cloud-to-device message",
		"devid-sim c2d board-1 hello --prop kind=greeting --state /tmp/sim", []string{"hub", "prop"}, verbC2D},
	{"telemetry", "[--device ID] [--hub NAME] [--after N] [--wait D] [--min N]", "print the telemetry the hubs received, optionally waiting for it",
		"devid-sim telemetry --device board-1 --wait 10s --state /tmp/sim", []string{"device", "hub", "after", "wait", "min"}, verbTelemetry},
	{"revoke", "(--crl FILE [--chain FILE] | --cert FILE | --thumbprint HEX | --serial HEX | --device ID [--hub NAME])", "revoke device certificates: the hubs and DPS refuse them",
		"devid-sim revoke --crl issuing.crl --state /tmp/sim", []string{"crl", "chain", "cert", "thumbprint", "serial", "device", "hub"}, verbRevoke},
	{"fault", "(add [flags] | list | clear [ID])", "add, list or clear injected faults (throttling, errors, delays, dropped connections)",
		"devid-sim fault add --scope dps --status 429 --retry-after 5 --count 3 --state /tmp/sim", faultFlags, verbFault},
	{"connections", "", "list the open MQTT connections",
		"devid-sim connections --state /tmp/sim", nil, verbConnections},
	{"crl", "", "print the simulator CA's CRL (DER)",
		"devid-sim crl --state /tmp/sim > issuing.crl", nil, verbCRL},
}

// lookupVerb finds a control verb by name.
func lookupVerb(name string) (verb, bool) {
	for _, v := range verbs {
		if v.name == name {
			return v, true
		}
	}
	return verb{}, false
}

// flags are the flags of every control verb (each verb reads its own).
type flags struct {
	stateDir, ctlURL, hub        string
	tokenFile                    string
	iothubs, props               []string
	ca, cert, crlFile, chainFile string
	deviceID, device             string
	policy, webhook, twin        string
	credPolicy                   string
	disabled, noRepro, reset     bool
	desired, payload             string
	timeout                      int
	after                        uint64
	wait                         string
	minN                         int
	thumb, serial                string
	scope, ops                   string
	status, ra, delay, drop      int
	refuse, count                int
}

// boolFlags take no value (splitArgs must not swallow the next argument).
var boolFlags = map[string]bool{"disabled": true, "no-reprovision": true, "reset-data": true, "h": true, "help": true}

func bindFlags(fs *flag.FlagSet) *flags {
	f := &flags{}
	fs.StringVar(&f.stateDir, "state", "", "state `DIR` of the running simulator")
	fs.StringVar(&f.ctlURL, "control", os.Getenv("DEVID_SIM_CONTROL"), "control plane `URL` (default: from --state DIR/ready.json)")
	fs.StringVar(&f.tokenFile, "control-token-file", os.Getenv("DEVID_SIM_CONTROL_TOKEN_FILE"), "bearer token `FILE` of the control plane (default: from --state DIR/ready.json)")
	// --hub is also accepted as the linked hub of an enrollment.
	fs.StringVar(&f.hub, "hub", "", "hub `NAME`")
	fs.Func("iothub", "linked hub `HOST` for an enrollment (repeatable)", func(v string) error { f.iothubs = append(f.iothubs, v); return nil })
	fs.Func("prop", "`K=V` message property (repeatable)", func(v string) error { f.props = append(f.props, v); return nil })
	fs.StringVar(&f.ca, "ca", "", "CA certificate PEM `FILE` (enrollment group)")
	fs.StringVar(&f.cert, "cert", "", "certificate PEM `FILE`")
	fs.StringVar(&f.crlFile, "crl", "", "CRL `FILE` (PEM or DER) to revoke from")
	fs.StringVar(&f.chainFile, "chain", "", "PEM `FILE` of the CA certificates between the group CA and the CRL signer")
	fs.StringVar(&f.deviceID, "device-id", "", "device `ID`")
	fs.StringVar(&f.device, "device", "", "device or registration `ID`")
	fs.StringVar(&f.policy, "policy", "", "allocation `POLICY`: hashed | static | geoLatency | custom")
	fs.StringVar(&f.credPolicy, "credential-policy", "", "credential policy `NAME`: DPS issues a certificate for a register request's csr (x-sim-credentialPolicy; without one it issues nothing)")
	fs.StringVar(&f.webhook, "webhook", "", "custom allocation webhook `URL`")
	fs.BoolVar(&f.disabled, "disabled", false, "create disabled")
	fs.StringVar(&f.twin, "twin", "", "initial twin JSON {\"tags\":{},\"properties\":{\"desired\":{}}}")
	fs.BoolVar(&f.noRepro, "no-reprovision", false, "reprovision policy: never update hub assignment")
	fs.BoolVar(&f.reset, "reset-data", false, "reprovision policy: do not migrate device data")
	fs.StringVar(&f.desired, "desired", "", "desired properties patch `JSON`")
	fs.StringVar(&f.payload, "payload", "", "method payload `JSON`")
	fs.IntVar(&f.timeout, "timeout", 30, "method response timeout in seconds (`S`)")
	fs.Uint64Var(&f.after, "after", 0, "only telemetry after sequence number `N`")
	fs.StringVar(&f.wait, "wait", "", "wait up to `D` (e.g. 10s) for telemetry")
	fs.IntVar(&f.minN, "min", 1, "with --wait: wait for `N` records")
	fs.StringVar(&f.thumb, "thumbprint", "", "certificate thumbprint in `HEX`")
	fs.StringVar(&f.serial, "serial", "", "certificate serial in `HEX`")
	fs.StringVar(&f.scope, "scope", "", "fault `SCOPE`: dps | hub")
	fs.StringVar(&f.ops, "ops", "", "fault `OPS`, comma-separated")
	fs.IntVar(&f.status, "status", 0, "fault `STATUS`: 429 | 5xx")
	fs.IntVar(&f.ra, "retry-after", 0, "fault retry-after in seconds (`S`)")
	fs.IntVar(&f.delay, "delay-ms", 0, "fault delay in `MS`")
	fs.IntVar(&f.drop, "drop-after", 0, "fault: drop the connection after `K` messages")
	fs.IntVar(&f.refuse, "refuse-seconds", 0, "fault: refuse connections for `T` seconds")
	fs.IntVar(&f.count, "count", 0, "fault applies `N` times (0 = until cleared)")
	return f
}

// invocation is one run of a control verb.
type invocation struct {
	verb string
	pos  []string // positional arguments
	*flags
	c *client
}

// control runs a control verb.
func control(name string, args []string, stdout io.Writer) error {
	v, ok := lookupVerb(name)
	if !ok {
		return cmdline.Usagef("unknown command %q", name)
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := bindFlags(fs)
	pos, flagArgs := splitArgs(args, boolFlags)
	if err := fs.Parse(flagArgs); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			verbHelp(stdout, v)
			return nil
		}
		return cmdline.Usage(err)
	}
	var stray error
	fs.Visit(func(fl *flag.Flag) {
		if stray == nil && !slices.Contains(v.flags, fl.Name) && fl.Name != "state" && fl.Name != "control" && fl.Name != "control-token-file" {
			stray = cmdline.Usagef("--%s does not apply to %s", fl.Name, name)
		}
	})
	if stray != nil {
		return stray
	}
	r, err := controlPlane(f.ctlURL, f.tokenFile, f.stateDir)
	if err != nil {
		return err
	}
	r.ControlURL = strings.TrimRight(r.ControlURL, "/")
	return v.run(&invocation{verb: name, pos: pos, flags: f, c: &client{ready: r}})
}

// controlPlane finds the control plane: --control (and
// --control-token-file), else the control_url and control_token_file of
// the ready.json in --state DIR (or DEVID_SIM_STATE).
func controlPlane(ctlURL, tokenFile, stateDir string) (simapi.Ready, error) {
	if ctlURL != "" {
		return simapi.Ready{ControlURL: ctlURL, ControlTokenFile: tokenFile}, nil
	}
	if stateDir == "" {
		stateDir = os.Getenv("DEVID_SIM_STATE")
	}
	if stateDir == "" {
		return simapi.Ready{}, cmdline.Usage(errors.New("give --state DIR or --control URL (or DEVID_SIM_STATE / DEVID_SIM_CONTROL)"))
	}
	b, err := os.ReadFile(filepath.Join(stateDir, "ready.json"))
	if err != nil {
		return simapi.Ready{}, fmt.Errorf("no running simulator for %s: %w", stateDir, err)
	}
	var r simapi.Ready
	if err := json.Unmarshal(b, &r); err != nil {
		return simapi.Ready{}, fmt.Errorf("%s/ready.json: %w", stateDir, err)
	}
	if tokenFile != "" {
		r.ControlTokenFile = tokenFile
	}
	return r, nil
}

// splitArgs separates positional arguments from flags so flags may come
// after them (`enroll-group g1 --ca ca.pem`).
func splitArgs(args []string, boolFlags map[string]bool) (pos, flags []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "-") && len(a) > 1 {
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && !boolFlags[name] && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
			continue
		}
		pos = append(pos, a)
	}
	return pos, flags
}

// need fails unless there are n positional arguments.
func (x *invocation) need(n int, what string) error {
	if len(x.pos) < n {
		return cmdline.Usagef("missing %s", what)
	}
	return nil
}

// hubPath is the /hubs/{hub} prefix of --hub, or "".
func (x *invocation) hubPath() string {
	if x.hub != "" {
		return "/hubs/" + url.PathEscape(x.hub)
	}
	return ""
}

// show calls the control plane and prints the JSON answer.
func (x *invocation) show(method, path string, in any) error {
	var out any
	if err := x.c.do(method, path, in, &out); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(out, "", "  ")
	fmt.Println(string(b))
	return nil
}

func verbReady(x *invocation) error {
	var r any
	if err := x.c.do("GET", "/sim/ready", nil, &r); err != nil {
		return err
	}
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	return nil
}

// enrollment is the enrollment body the flags describe.
func (x *invocation) enrollment() (map[string]any, error) {
	e := map[string]any{"provisioningStatus": "enabled"}
	if x.disabled {
		e["provisioningStatus"] = "disabled"
	}
	if x.policy != "" {
		e["allocationPolicy"] = x.policy
	}
	if x.credPolicy != "" {
		e["x-sim-credentialPolicy"] = x.credPolicy
	}
	hubs := append([]string{}, x.iothubs...)
	if x.hub != "" {
		hubs = append(hubs, x.hub)
	}
	if len(hubs) > 0 {
		e["iotHubs"] = hubs
	}
	if x.webhook != "" {
		e["customAllocationDefinition"] = map[string]string{"webhookUrl": x.webhook, "apiVersion": "2021-10-01"}
	}
	if x.twin != "" {
		var t any
		if err := json.Unmarshal([]byte(x.twin), &t); err != nil {
			return nil, cmdline.Usagef("--twin: %v", err)
		}
		e["initialTwin"] = t
	}
	if x.noRepro || x.reset {
		e["reprovisionPolicy"] = map[string]bool{"updateHubAssignment": !x.noRepro, "migrateDeviceData": !x.reset}
	}
	return e, nil
}

// enroll PUTs an enrollment of kind (enrollmentGroups or enrollments)
// whose x509 attestation (certs: signingCertificates or
// clientCertificates) is the PEM file named by flagName.
func (x *invocation) enroll(what, flagName, file, kind, certs string, extra func(map[string]any)) error {
	if err := x.need(1, what); err != nil {
		return err
	}
	if file == "" {
		return cmdline.Usagef("--%s FILE is required", flagName)
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	e, err := x.enrollment()
	if err != nil {
		return err
	}
	extra(e)
	e["attestation"] = map[string]any{"type": "x509", "x509": map[string]any{certs: map[string]any{"primary": map[string]string{"certificate": string(pem)}}}}
	return x.show("PUT", "/"+kind+"/"+url.PathEscape(x.pos[0])+"?api-version=2021-10-01", e)
}

func verbEnrollGroup(x *invocation) error {
	return x.enroll("group id", "ca", x.ca, "enrollmentGroups", "signingCertificates", func(e map[string]any) {
		e["enrollmentGroupId"] = x.pos[0]
	})
}

func verbEnroll(x *invocation) error {
	return x.enroll("registration id", "cert", x.cert, "enrollments", "clientCertificates", func(e map[string]any) {
		e["registrationId"] = x.pos[0]
		if x.deviceID != "" {
			e["deviceId"] = x.deviceID
		}
	})
}

func verbUnenroll(x *invocation) error {
	if err := x.need(1, "id"); err != nil {
		return err
	}
	p := "/enrollments/"
	if x.verb == "unenroll-group" {
		p = "/enrollmentGroups/"
	}
	return x.c.do("DELETE", p+url.PathEscape(x.pos[0])+"?api-version=2021-10-01", nil, nil)
}

// verbSetStatus is disable and enable.
func verbSetStatus(x *invocation) error {
	if err := x.need(2, "kind and id"); err != nil {
		return err
	}
	var p string
	switch x.pos[0] {
	case "group":
		p = "/sim/enrollmentGroups/" + url.PathEscape(x.pos[1])
	case "enrollment":
		p = "/sim/enrollments/" + url.PathEscape(x.pos[1])
	case "registration":
		p = "/sim/registrations/" + url.PathEscape(x.pos[1])
	case "device":
		h := x.hub
		if h == "" {
			h = "sim-hub-1"
		}
		p = "/sim/devices/" + url.PathEscape(h) + "/" + url.PathEscape(x.pos[1])
	default:
		return cmdline.Usagef("kind %q is not group, enrollment, registration or device", x.pos[0])
	}
	return x.show("POST", p+"/"+x.verb, nil)
}

func verbRegistrations(x *invocation) error {
	if len(x.pos) > 0 {
		return x.show("POST", "/registrations/"+url.PathEscape(x.pos[0])+"/query", nil)
	}
	return x.show("GET", "/registrations", nil)
}

func verbDevices(x *invocation) error { return x.show("GET", x.hubPath()+"/devices", nil) }

func verbDeleteDevice(x *invocation) error {
	if err := x.need(1, "device `ID`"); err != nil {
		return err
	}
	return x.c.do("DELETE", x.hubPath()+"/devices/"+url.PathEscape(x.pos[0]), nil, nil)
}

func verbTwin(x *invocation) error {
	if err := x.need(1, "device `ID`"); err != nil {
		return err
	}
	p := x.hubPath() + "/twins/" + url.PathEscape(x.pos[0])
	if x.desired == "" {
		return x.show("GET", p, nil)
	}
	var d any
	if err := json.Unmarshal([]byte(x.desired), &d); err != nil {
		return cmdline.Usagef("--desired: %v", err)
	}
	return x.show("PATCH", p, map[string]any{"properties": map[string]any{"desired": d}})
}

func verbMethod(x *invocation) error {
	if err := x.need(2, "device id and method name"); err != nil {
		return err
	}
	body := map[string]any{"methodName": x.pos[1], "responseTimeoutInSeconds": x.timeout}
	if x.payload != "" {
		if !json.Valid([]byte(x.payload)) {
			return cmdline.Usage(errors.New("--payload is not valid JSON"))
		}
		body["payload"] = json.RawMessage(x.payload)
	}
	return x.show("POST", x.hubPath()+"/twins/"+url.PathEscape(x.pos[0])+"/methods", body)
}

func verbC2D(x *invocation) error {
	if err := x.need(2, "device id and text"); err != nil {
		return err
	}
	pm := map[string]string{}
	for _, p := range x.props {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return cmdline.Usagef("--prop %q: want k=v", p)
		}
		pm[k] = v
	}
	return x.show("POST", "/sim/c2d", simapi.C2DRequest{Hub: x.hub, DeviceID: x.pos[0], Payload: x.pos[1], Properties: pm})
}

func verbTelemetry(x *invocation) error {
	q := url.Values{}
	if x.device != "" {
		q.Set("deviceId", x.device)
	}
	if x.hub != "" {
		q.Set("hub", x.hub)
	}
	q.Set("after", fmt.Sprint(x.after))
	if x.wait != "" {
		q.Set("wait", x.wait)
		q.Set("min", fmt.Sprint(x.minN))
	}
	return x.show("GET", "/sim/telemetry?"+q.Encode(), nil)
}

func verbRevoke(x *invocation) error {
	req := simapi.RevokeRequest{Thumbprint: x.thumb, Serial: x.serial, DeviceID: x.device, Hub: x.hub}
	for _, f := range []struct {
		path string
		dst  *string
	}{{x.cert, &req.Certificate}, {x.crlFile, &req.CRL}, {x.chainFile, &req.Chain}} {
		if f.path == "" {
			continue
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			return err
		}
		if f.dst == &req.CRL && !bytes.HasPrefix(bytes.TrimSpace(b), []byte("-----")) {
			b = []byte(base64.StdEncoding.EncodeToString(b)) // DER travels as base64 in JSON
		}
		*f.dst = string(b)
	}
	return x.show("POST", "/sim/revoke", req)
}

func verbFault(x *invocation) error {
	if err := x.need(1, "add | list | clear"); err != nil {
		return err
	}
	switch x.pos[0] {
	case "add":
		f := simapi.Fault{Scope: x.scope, Hub: x.hub, DeviceID: x.device, Status: x.status, RetryAfter: x.ra,
			DelayMs: x.delay, DropAfter: x.drop, RefuseSeconds: x.refuse, Count: x.count}
		if x.ops != "" {
			f.Ops = strings.Split(x.ops, ",")
		}
		return x.show("POST", "/sim/faults", f)
	case "list":
		return x.show("GET", "/sim/faults", nil)
	case "clear":
		p := "/sim/faults"
		if len(x.pos) > 1 {
			p += "/" + url.PathEscape(x.pos[1])
		}
		return x.c.do("DELETE", p, nil, nil)
	}
	return cmdline.Usagef("%q is not add, list or clear", x.pos[0])
}

func verbConnections(x *invocation) error { return x.show("GET", "/sim/connections", nil) }

func verbCRL(x *invocation) error {
	var b []byte
	if err := x.c.do("GET", "/crl/issuing.crl", nil, &b); err != nil {
		return err
	}
	_, err := os.Stdout.Write(b)
	return err
}

// client calls the control plane: ready's control_url, with its token.
type client struct{ ready simapi.Ready }

// do sends in as JSON and decodes the answer into out (*[]byte: raw).
func (c *client) do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.ready.ControlURL+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if err := c.ready.Authorize(req); err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: 6 * time.Minute}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	if out == nil {
		return nil
	}
	if p, ok := out.(*[]byte); ok {
		*p = b
		return nil
	}
	return json.Unmarshal(b, out)
}
