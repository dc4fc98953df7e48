// Command devid-sim runs the Azure DPS, IoT Hub and CA simulator
// (`devid-sim serve`) and drives its control plane (every other verb).
// See docs/simulator.md.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"devid/simulator"
)

var version = "dev"

const usage = `devid-sim: Azure IoT DPS + IoT Hub + CA simulator

Server:
  devid-sim serve --state DIR [flags]          run; prints one JSON ready line on stdout

Control (talk to a running simulator; --state DIR or --control URL):
  devid-sim ready                              print the ready line of the running simulator
  devid-sim enroll-group ID --ca FILE [--hub HOST]... [--policy P] [--disabled] [--twin JSON] [--no-reprovision|--reset-data]
  devid-sim enroll ID --cert FILE [--device-id ID] [--hub HOST]... [--policy P] [--disabled]
  devid-sim unenroll-group ID | unenroll ID
  devid-sim disable (group|enrollment|registration|device) ID [--hub NAME]
  devid-sim enable  (group|enrollment|registration|device) ID [--hub NAME]
  devid-sim registrations [GROUP]              list registration states
  devid-sim devices [--hub NAME]               list hub devices
  devid-sim delete-device ID [--hub NAME]
  devid-sim twin ID [--hub NAME] [--desired JSON]
  devid-sim method ID NAME [--payload JSON] [--timeout S] [--hub NAME]
  devid-sim c2d ID TEXT [--prop k=v]... [--hub NAME]
  devid-sim telemetry [--device ID] [--hub NAME] [--after N] [--wait 10s] [--min N]
  devid-sim revoke (--crl FILE [--chain FILE] | --cert FILE | --thumbprint HEX | --serial HEX | --device ID [--hub NAME])
  devid-sim fault add [--scope dps|hub] [--device ID] [--hub NAME] [--ops a,b] [--status N] [--retry-after N]
                      [--delay-ms N] [--drop-after K] [--refuse-seconds T] [--count N]
  devid-sim fault list | fault clear [ID]
  devid-sim connections
  devid-sim crl > issuing.crl
  devid-sim version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "version":
		fmt.Println(version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		err = control(os.Args[1], os.Args[2:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devid-sim:", err)
		os.Exit(1)
	}
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	d := simulator.DefaultSwitches()
	var (
		state       = fs.String("state", "", "state directory (created 0700); required")
		idScope     = fs.String("id-scope", "0ne0000SIM1", "DPS ID scope")
		dpsHost     = fs.String("dps-host", "localhost", "DPS host name (TLS SNI / certificate name)")
		dpsAddr     = fs.String("dps-addr", "127.0.0.1:0", "DPS MQTT/TLS listen address")
		dpsWSAddr   = fs.String("dps-ws-addr", "127.0.0.1:0", "DPS MQTT over secure WebSocket listen address")
		hubs        = fs.String("hubs", "sim-hub-1", "comma-separated hub names; host = NAME.azure-devices.net unless --hub-host")
		controlAddr = fs.String("control-addr", "127.0.0.1:0", "control plane HTTP listen address (loopback)")
		estAddr     = fs.String("est-addr", "127.0.0.1:0", "EST HTTPS listen address")
		retryAfter  = fs.Int("retry-after", 3, "retry-after seconds DPS sends with 202 (-1 = omit retry-after)")
		polls       = fs.Int("assigning-polls", 1, "polls answered 202 assigning before the 200 result")
		pollLimit   = fs.Int("poll-limit", 5, "operation-status polls allowed per device per --poll-window (0 = unlimited)")
		pollWindow  = fs.Duration("poll-window", 10*time.Second, "window of --poll-limit")
		telMax      = fs.Int("telemetry-max", 100000, "telemetry records kept (oldest dropped)")
		issued      = fs.Duration("issued-validity", 30*24*time.Hour, "lifetime of certificates issued for a DPS csr / EST")
		verbose     = fs.Bool("v", false, "debug logging")
		serverKey   = fs.String("server-key", "rsa", "TLS server key: rsa (like Azure) | ecdsa (P-256, cheaper handshakes for load)")

		dpsMismatch = fs.String("dps-id-mismatch", d.DPSIDMismatch, "client id / username / CN mismatch on DPS: connack | register (401)")
		disabled    = fs.String("disabled-enrollment", d.DisabledEnrollment, "disabled enrollment or registration: status (\"disabled\" result) | 401")
		respQoS     = fs.String("dps-response-qos", d.DPSResponseQoS, "DPS response QoS: granted (min(granted,1)) | 0")
		failedSt    = fs.Int("failed-topic-status", d.FailedTopicStatus, "topic status of a completed-but-failed DPS operation")
		csrCurves   = fs.String("csr-curves", d.CSRCurves, "accepted CSR curves")
		retain      = fs.String("hub-retain", d.HubRetain, "retained hub publish: property (mqtt-retain) | close")
		unknown     = fs.String("hub-unknown-topic", d.HubUnknownTopic, "publish to an undocumented hub topic: close | ignore")
		dpsTLS      = fs.String("dps-max-tls", d.DPSMaxTLS, "highest TLS version on DPS: 1.2 | 1.3")
		hubTLS      = fs.String("hub-max-tls", d.HubMaxTLS, "highest TLS version on hubs: 1.2 | 1.3")
		sni         = fs.Bool("require-sni", d.RequireSNI, "refuse TLS handshakes without SNI")
		apiVers     = fs.String("api-versions", d.APIVersions, "strict (only versions in the reference) | lenient")
		drafts      = fs.Bool("accept-draft-api-versions", d.DraftAPIVersions, "accept the 2026-11-xx draft DPS api-versions")
		csrOld      = fs.String("csr-old-api", d.CSROldAPI, "csr with an api-version before 2025-07-01-preview: ignore | reject")
		credTopic   = fs.String("hub-credentials-topic", d.HubCredentialsTopic, "hub certificate renewal topic spelling: both | credentials | credential")
		errField    = fs.String("dps-error-message-field", d.DPSErrorMessageField, "text field of DPS error bodies: message | errorMessage | both")
		connProfile = fs.String("connection-profile", "", "registrationState.connectionProfile for draft api-version 2026-11-02-preview clients (e.g. classic, mqttV5); empty = omit")
		regRate     = fs.Int("registrations-per-minute", 0, "throttle register requests per service with 429 (documented quota 1000; 0 = off)")
		credResp    = fs.String("hub-credentials-response", d.HubCredentialsResponse, "hub certificate renewal 200 body: array | object")
	)
	var hubAddr, hubWS, hubHost, hubLatency multi
	fs.Var(&hubAddr, "hub-addr", "NAME=ADDR hub MQTT/TLS listen address (repeatable)")
	fs.Var(&hubWS, "hub-ws-addr", "NAME=ADDR hub WebSocket listen address (repeatable)")
	fs.Var(&hubHost, "hub-host", "NAME=HOST hub host name (repeatable)")
	fs.Var(&hubLatency, "hub-latency", "NAME=MS configured latency for geoLatency allocation (repeatable)")
	var estCAs multi
	fs.Var(&estCAs, "est-client-ca", "PEM file of a CA whose certificates may enroll over EST (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *state == "" {
		return errors.New("serve: --state DIR is required")
	}
	for name, v := range map[string]string{"dps-id-mismatch": *dpsMismatch + "|connack|register", "disabled-enrollment": *disabled + "|status|401",
		"dps-response-qos": *respQoS + "|granted|0", "hub-retain": *retain + "|property|close", "hub-unknown-topic": *unknown + "|close|ignore",
		"dps-max-tls": *dpsTLS + "|1.2|1.3", "hub-max-tls": *hubTLS + "|1.2|1.3", "api-versions": *apiVers + "|strict|lenient", "csr-old-api": *csrOld + "|ignore|reject",
		"hub-credentials-topic": *credTopic + "|both|credentials|credential", "hub-credentials-response": *credResp + "|array|object",
		"dps-error-message-field": *errField + "|message|errorMessage|both"} {
		parts := strings.Split(v, "|")
		ok := false
		for _, p := range parts[1:] {
			ok = ok || p == parts[0]
		}
		if !ok {
			return fmt.Errorf("--%s %q: want one of %s", name, parts[0], strings.Join(parts[1:], ", "))
		}
	}
	kv := func(m multi, flagName string) (map[string]string, error) {
		out := map[string]string{}
		for _, x := range m {
			k, v, ok := strings.Cut(x, "=")
			if !ok || k == "" || v == "" {
				return nil, fmt.Errorf("--%s %q: want NAME=VALUE", flagName, x)
			}
			out[k] = v
		}
		return out, nil
	}
	ha, err := kv(hubAddr, "hub-addr")
	if err != nil {
		return err
	}
	hw, err := kv(hubWS, "hub-ws-addr")
	if err != nil {
		return err
	}
	hh, err := kv(hubHost, "hub-host")
	if err != nil {
		return err
	}
	hl, err := kv(hubLatency, "hub-latency")
	if err != nil {
		return err
	}
	var hubCfgs []simulator.HubConfig
	for _, n := range strings.Split(*hubs, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		h := simulator.HubConfig{Name: n, Host: hh[n], Addr: ha[n], WSAddr: hw[n], ApplyAllocationPolicy: true, AllocationWeight: 1}
		if v, ok := hl[n]; ok {
			if _, err := fmt.Sscanf(v, "%d", &h.LatencyMs); err != nil {
				return fmt.Errorf("--hub-latency %s=%s: %v", n, v, err)
			}
		}
		hubCfgs = append(hubCfgs, h)
	}
	for _, m := range []map[string]string{ha, hw, hh, hl} {
		for k := range m {
			found := false
			for _, h := range hubCfgs {
				found = found || h.Name == k
			}
			if !found {
				return fmt.Errorf("hub %q is not in --hubs %q", k, *hubs)
			}
		}
	}
	lvl := slog.LevelInfo
	if *verbose {
		lvl = slog.LevelDebug
	}
	abs, err := filepath.Abs(*state)
	if err != nil {
		return err
	}
	cfg := simulator.Config{
		StateDir: abs, IDScope: *idScope, DPSHost: *dpsHost, DPSAddr: *dpsAddr, DPSWSAddr: *dpsWSAddr,
		Hubs: hubCfgs, ControlAddr: *controlAddr, ESTAddr: *estAddr, RetryAfter: *retryAfter,
		AssigningPolls: *polls, ServerKey: *serverKey, PollLimit: *pollLimit, PollWindow: *pollWindow, TelemetryMax: *telMax, IssuedValidity: *issued,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})),
		Switches: simulator.Switches{
			DPSIDMismatch: *dpsMismatch, DisabledEnrollment: *disabled, DPSResponseQoS: *respQoS, FailedTopicStatus: *failedSt,
			CSRCurves: *csrCurves, HubRetain: *retain, HubUnknownTopic: *unknown, DPSMaxTLS: *dpsTLS, HubMaxTLS: *hubTLS,
			RequireSNI: *sni, APIVersions: *apiVers, DraftAPIVersions: *drafts, CSROldAPI: *csrOld,
			HubCredentialsTopic: *credTopic, HubCredentialsResponse: *credResp, DPSErrorMessageField: *errField,
			ConnectionProfile: *connProfile, RegistrationsPerMinute: *regRate,
		},
		ESTHandler: estHandler,
	}
	for _, f := range estCAs {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("--est-client-ca: %w", err)
		}
		certs, err := simulator.ParsePEMCerts(b)
		if err != nil {
			return fmt.Errorf("--est-client-ca %s: %w", f, err)
		}
		cfg.ESTClientCAs = append(cfg.ESTClientCAs, certs...)
	}
	if *retryAfter < -1 || *regRate < 0 || *polls < 0 || *pollLimit < 0 || *telMax < 1 || *issued <= 0 {
		return errors.New("serve: --retry-after must be >= -1, --assigning-polls and --poll-limit >= 0, --telemetry-max >= 1, --issued-validity > 0")
	}
	if *pollLimit == 0 {
		cfg.PollLimit = -1
	}
	sim, err := simulator.Start(cfg)
	if err != nil {
		return err
	}
	ready := sim.Ready()
	ready.PID = os.Getpid()
	line, _ := json.Marshal(ready)
	// ready.json lets CLI verbs find the control plane from --state.
	if err := simulator.WriteFileAtomic(filepath.Join(abs, "ready.json"), append(line, '\n'), 0o600); err != nil {
		sim.Close()
		return fmt.Errorf("write ready.json: %w", err)
	}
	fmt.Println(string(line))
	cfg.Logger.Info("devid-sim ready", "state", abs, "dps", ready.DPS.Addr, "control", ready.ControlURL)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return sim.Close()
}

// ---- control verbs ----

type client struct{ base string }

func (c *client) do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 6 * time.Minute}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	if out != nil {
		if p, ok := out.(*[]byte); ok {
			*p = b
			return nil
		}
		return json.Unmarshal(b, out)
	}
	return nil
}

func printJSON(v any) {
	b, _ := json.MarshalIndent(v, "", "  ")
	fmt.Println(string(b))
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

func control(verb string, args []string) error {
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	stateDir := fs.String("state", "", "state directory of the running simulator")
	ctlURL := fs.String("control", os.Getenv("DEVID_SIM_CONTROL"), "control plane URL (default: from --state DIR/ready.json)")
	hub := fs.String("hub", "", "hub name")
	var hubsFlag, props multi
	fs.Var(&hubsFlag, "iothub", "linked hub host for an enrollment (repeatable)")
	fs.Var(&props, "prop", "k=v message property (repeatable)")
	ca := fs.String("ca", "", "CA certificate PEM (enrollment group)")
	cert := fs.String("cert", "", "certificate PEM")
	crlFile := fs.String("crl", "", "CRL file (PEM or DER) to revoke from")
	chainFile := fs.String("chain", "", "PEM CA certificates between the group CA and the CRL signer")
	deviceID := fs.String("device-id", "", "device id")
	device := fs.String("device", "", "device / registration id")
	policy := fs.String("policy", "", "allocation policy: hashed | static | geoLatency | custom")
	webhook := fs.String("webhook", "", "custom allocation webhook URL")
	disabled := fs.Bool("disabled", false, "create disabled")
	twin := fs.String("twin", "", "initial twin JSON {\"tags\":{},\"properties\":{\"desired\":{}}}")
	noRepro := fs.Bool("no-reprovision", false, "reprovision policy: never update hub assignment")
	reset := fs.Bool("reset-data", false, "reprovision policy: do not migrate device data")
	desired := fs.String("desired", "", "desired properties patch JSON")
	payload := fs.String("payload", "", "method payload JSON")
	timeout := fs.Int("timeout", 30, "method response timeout seconds")
	after := fs.Uint64("after", 0, "telemetry after this seq")
	wait := fs.String("wait", "", "wait up to this long for telemetry")
	minN := fs.Int("min", 1, "with --wait: records to wait for")
	thumb := fs.String("thumbprint", "", "thumbprint hex")
	serial := fs.String("serial", "", "serial hex")
	scope := fs.String("scope", "", "fault scope dps | hub")
	ops := fs.String("ops", "", "fault ops, comma-separated")
	status := fs.Int("status", 0, "fault status 429 | 5xx")
	ra := fs.Int("retry-after", 0, "fault retry-after seconds")
	delay := fs.Int("delay-ms", 0, "fault delay")
	drop := fs.Int("drop-after", 0, "fault drop after K messages")
	refuse := fs.Int("refuse-seconds", 0, "fault refuse connections for T seconds")
	count := fs.Int("count", 0, "fault applies N times (0 = until cleared)")
	// --hub is also accepted as the linked hub of an enrollment.
	pos, flags := splitArgs(args, map[string]bool{"disabled": true, "no-reprovision": true, "reset-data": true})
	if err := fs.Parse(flags); err != nil {
		return err
	}
	base := *ctlURL
	if base == "" {
		dir := *stateDir
		if dir == "" {
			dir = os.Getenv("DEVID_SIM_STATE")
		}
		if dir == "" {
			return errors.New("give --state DIR or --control URL (or DEVID_SIM_STATE / DEVID_SIM_CONTROL)")
		}
		b, err := os.ReadFile(filepath.Join(dir, "ready.json"))
		if err != nil {
			return fmt.Errorf("no running simulator for %s: %w", dir, err)
		}
		var r simulator.Ready
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("%s/ready.json: %w", dir, err)
		}
		base = r.ControlURL
	}
	c := &client{base: strings.TrimRight(base, "/")}
	need := func(n int, what string) error {
		if len(pos) < n {
			return fmt.Errorf("%s: missing %s", verb, what)
		}
		return nil
	}
	hubPath := func() string {
		if *hub != "" {
			return "/hubs/" + url.PathEscape(*hub)
		}
		return ""
	}
	enrollmentBody := func() (map[string]any, error) {
		e := map[string]any{"provisioningStatus": "enabled"}
		if *disabled {
			e["provisioningStatus"] = "disabled"
		}
		if *policy != "" {
			e["allocationPolicy"] = *policy
		}
		hubs := append([]string{}, hubsFlag...)
		if *hub != "" {
			hubs = append(hubs, *hub)
		}
		if len(hubs) > 0 {
			e["iotHubs"] = hubs
		}
		if *webhook != "" {
			e["customAllocationDefinition"] = map[string]string{"webhookUrl": *webhook, "apiVersion": "2021-10-01"}
		}
		if *twin != "" {
			var t any
			if err := json.Unmarshal([]byte(*twin), &t); err != nil {
				return nil, fmt.Errorf("--twin: %v", err)
			}
			e["initialTwin"] = t
		}
		if *noRepro || *reset {
			e["reprovisionPolicy"] = map[string]bool{"updateHubAssignment": !*noRepro, "migrateDeviceData": !*reset}
		}
		return e, nil
	}
	switch verb {
	case "ready":
		var r any
		if err := c.do("GET", "/sim/ready", nil, &r); err != nil {
			return err
		}
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
	case "enroll-group":
		if err := need(1, "group id"); err != nil {
			return err
		}
		if *ca == "" {
			return errors.New("enroll-group: --ca FILE is required")
		}
		pem, err := os.ReadFile(*ca)
		if err != nil {
			return err
		}
		e, err := enrollmentBody()
		if err != nil {
			return err
		}
		e["enrollmentGroupId"] = pos[0]
		e["attestation"] = map[string]any{"type": "x509", "x509": map[string]any{"signingCertificates": map[string]any{"primary": map[string]string{"certificate": string(pem)}}}}
		var out any
		if err := c.do("PUT", "/enrollmentGroups/"+url.PathEscape(pos[0])+"?api-version=2021-10-01", e, &out); err != nil {
			return err
		}
		printJSON(out)
	case "enroll":
		if err := need(1, "registration id"); err != nil {
			return err
		}
		if *cert == "" {
			return errors.New("enroll: --cert FILE is required")
		}
		pem, err := os.ReadFile(*cert)
		if err != nil {
			return err
		}
		e, err := enrollmentBody()
		if err != nil {
			return err
		}
		e["registrationId"] = pos[0]
		if *deviceID != "" {
			e["deviceId"] = *deviceID
		}
		e["attestation"] = map[string]any{"type": "x509", "x509": map[string]any{"clientCertificates": map[string]any{"primary": map[string]string{"certificate": string(pem)}}}}
		var out any
		if err := c.do("PUT", "/enrollments/"+url.PathEscape(pos[0])+"?api-version=2021-10-01", e, &out); err != nil {
			return err
		}
		printJSON(out)
	case "unenroll-group", "unenroll":
		if err := need(1, "id"); err != nil {
			return err
		}
		p := "/enrollments/"
		if verb == "unenroll-group" {
			p = "/enrollmentGroups/"
		}
		return c.do("DELETE", p+url.PathEscape(pos[0])+"?api-version=2021-10-01", nil, nil)
	case "disable", "enable":
		if err := need(2, "kind and id"); err != nil {
			return err
		}
		var p string
		switch pos[0] {
		case "group":
			p = "/sim/enrollmentGroups/" + url.PathEscape(pos[1])
		case "enrollment":
			p = "/sim/enrollments/" + url.PathEscape(pos[1])
		case "registration":
			p = "/sim/registrations/" + url.PathEscape(pos[1])
		case "device":
			h := *hub
			if h == "" {
				h = "sim-hub-1"
			}
			p = "/sim/devices/" + url.PathEscape(h) + "/" + url.PathEscape(pos[1])
		default:
			return fmt.Errorf("%s: kind %q is not group, enrollment, registration or device", verb, pos[0])
		}
		var out any
		if err := c.do("POST", p+"/"+verb, nil, &out); err != nil {
			return err
		}
		printJSON(out)
	case "registrations":
		p := "/registrations"
		if len(pos) > 0 {
			p = "/registrations/" + url.PathEscape(pos[0]) + "/query"
			var out any
			if err := c.do("POST", p, nil, &out); err != nil {
				return err
			}
			printJSON(out)
			return nil
		}
		var out any
		if err := c.do("GET", p, nil, &out); err != nil {
			return err
		}
		printJSON(out)
	case "devices":
		var out any
		if err := c.do("GET", hubPath()+"/devices", nil, &out); err != nil {
			return err
		}
		printJSON(out)
	case "delete-device":
		if err := need(1, "device id"); err != nil {
			return err
		}
		return c.do("DELETE", hubPath()+"/devices/"+url.PathEscape(pos[0]), nil, nil)
	case "twin":
		if err := need(1, "device id"); err != nil {
			return err
		}
		var out any
		if *desired != "" {
			var d any
			if err := json.Unmarshal([]byte(*desired), &d); err != nil {
				return fmt.Errorf("--desired: %v", err)
			}
			if err := c.do("PATCH", hubPath()+"/twins/"+url.PathEscape(pos[0]), map[string]any{"properties": map[string]any{"desired": d}}, &out); err != nil {
				return err
			}
		} else if err := c.do("GET", hubPath()+"/twins/"+url.PathEscape(pos[0]), nil, &out); err != nil {
			return err
		}
		printJSON(out)
	case "method":
		if err := need(2, "device id and method name"); err != nil {
			return err
		}
		body := map[string]any{"methodName": pos[1], "responseTimeoutInSeconds": *timeout}
		if *payload != "" {
			body["payload"] = json.RawMessage(*payload)
			if !json.Valid([]byte(*payload)) {
				return errors.New("--payload is not valid JSON")
			}
		}
		var out any
		if err := c.do("POST", hubPath()+"/twins/"+url.PathEscape(pos[0])+"/methods", body, &out); err != nil {
			return err
		}
		printJSON(out)
	case "c2d":
		if err := need(2, "device id and text"); err != nil {
			return err
		}
		pm := map[string]string{}
		for _, p := range props {
			k, v, ok := strings.Cut(p, "=")
			if !ok {
				return fmt.Errorf("--prop %q: want k=v", p)
			}
			pm[k] = v
		}
		var out any
		if err := c.do("POST", "/sim/c2d", simulator.C2DRequest{Hub: *hub, DeviceID: pos[0], Payload: pos[1], Properties: pm}, &out); err != nil {
			return err
		}
		printJSON(out)
	case "telemetry":
		q := url.Values{}
		if *device != "" {
			q.Set("deviceId", *device)
		}
		if *hub != "" {
			q.Set("hub", *hub)
		}
		q.Set("after", fmt.Sprint(*after))
		if *wait != "" {
			q.Set("wait", *wait)
			q.Set("min", fmt.Sprint(*minN))
		}
		var out any
		if err := c.do("GET", "/sim/telemetry?"+q.Encode(), nil, &out); err != nil {
			return err
		}
		printJSON(out)
	case "revoke":
		req := simulator.RevokeRequest{Thumbprint: *thumb, Serial: *serial, DeviceID: *device, Hub: *hub}
		if *cert != "" {
			b, err := os.ReadFile(*cert)
			if err != nil {
				return err
			}
			req.Certificate = string(b)
		}
		for _, f := range []struct {
			path string
			dst  *string
		}{{*crlFile, &req.CRL}, {*chainFile, &req.Chain}} {
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
		var out any
		if err := c.do("POST", "/sim/revoke", req, &out); err != nil {
			return err
		}
		printJSON(out)
	case "fault":
		if err := need(1, "add | list | clear"); err != nil {
			return err
		}
		switch pos[0] {
		case "add":
			f := simulator.Fault{Scope: *scope, Hub: *hub, DeviceID: *device, Status: *status, RetryAfter: *ra,
				DelayMs: *delay, DropAfter: *drop, RefuseSeconds: *refuse, Count: *count}
			if *ops != "" {
				f.Ops = strings.Split(*ops, ",")
			}
			var out any
			if err := c.do("POST", "/sim/faults", f, &out); err != nil {
				return err
			}
			printJSON(out)
		case "list":
			var out any
			if err := c.do("GET", "/sim/faults", nil, &out); err != nil {
				return err
			}
			printJSON(out)
		case "clear":
			p := "/sim/faults"
			if len(pos) > 1 {
				p += "/" + url.PathEscape(pos[1])
			}
			return c.do("DELETE", p, nil, nil)
		default:
			return fmt.Errorf("fault: %q is not add, list or clear", pos[0])
		}
	case "connections":
		var out any
		if err := c.do("GET", "/sim/connections", nil, &out); err != nil {
			return err
		}
		printJSON(out)
	case "crl":
		var b []byte
		if err := c.do("GET", "/crl/issuing.crl", nil, &b); err != nil {
			return err
		}
		_, err := os.Stdout.Write(b)
		return err
	default:
		return fmt.Errorf("unknown verb %q\n%s", verb, usage)
	}
	return nil
}
