package config

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"devid/enroll/rotate"
	"devid/hal/board"
	"devid/hal/usbgadget"
)

// Validate checks every field and returns a *ValidationError naming each
// wrong one, or nil.
func (c *Config) Validate() error {
	var p problems
	c.validateGeneral(&p)
	c.validateKey(&p)
	c.validateFactory(&p)
	c.validateDPS(&p)
	c.validateHub(&p)
	c.validateNetwork(&p)
	c.validateRetry(&p)
	p.atLeast("clock.max_wait", c.Clock.MaxWait, Duration(time.Second))
	c.validateLocalAPI(&p)
	c.validateQueue(&p)
	c.validateHealth(&p)
	p.atLeast("hardware.button_hold", c.Hardware.ButtonHold, Duration(100*time.Millisecond))
	c.validateRenewal(&p)
	if len(p) > 0 {
		return &ValidationError{Problems: p}
	}
	return nil
}

// problems collects "field: what is wrong" lines in the order found.
type problems []string

func (p *problems) bad(field, format string, args ...any) {
	*p = append(*p, field+": "+fmt.Sprintf(format, args...))
}

func (p *problems) absPath(field, v string, required bool) {
	switch {
	case v == "" && required:
		p.bad(field, "must be set")
	case v == "":
	case !filepath.IsAbs(v):
		p.bad(field, "%q is not an absolute path", v)
	case strings.ContainsRune(v, 0):
		p.bad(field, "contains a NUL byte")
	}
}

func (p *problems) positive(field string, d Duration) {
	if d <= 0 {
		p.bad(field, "must be a positive duration like \"30s\", got %s", d)
	}
}

// atLeast refuses durations too short to be meant (a 1ms retry delay
// hammers the service; a 1s DPS timeout never completes).
func (p *problems) atLeast(field string, d, least Duration) {
	if d <= 0 {
		p.positive(field, d)
	} else if d < least {
		p.bad(field, "%s is too short to be meant; use at least %s", d, least)
	}
}

// systemDirs are directories the agent must never take as its state dir:
// run chmods the state dir to 0700 and owns what is in it.
var systemDirs = []string{"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/share", "/var", "/var/lib", "/var/tmp", "/var/log", "/var/run"}

func (c *Config) validateGeneral(p *problems) {
	p.absPath("state_dir", c.StateDir, true)
	if filepath.IsAbs(c.StateDir) && slices.Contains(systemDirs, filepath.Clean(c.StateDir)) {
		p.bad("state_dir", "%q is a system directory; the agent makes its state dir 0700 and owns it: use a directory of its own like /var/lib/devid", c.StateDir)
	}
	if c.DeviceID != "" {
		var bad *board.IDError
		if errors.As(board.Validate(c.DeviceID), &bad) {
			p.bad("device_id", "%q is not a valid device ID: %s", c.DeviceID, bad.Reason)
		}
	}
	if !slices.Contains(board.Sources, board.Source(c.DeviceIDSource)) {
		p.bad("device_id_source", "%q is not one of auto, config, devicetree, dmi, mac", c.DeviceIDSource)
	} else if c.DeviceIDSource == string(board.SourceConfig) && c.DeviceID == "" {
		p.bad("device_id_source", "is config, but device_id is not set")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		p.bad("log_level", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		p.bad("log_format", "%q is not one of text, json", c.LogFormat)
	}
}

func (c *Config) validateKey(p *problems) {
	switch scheme, arg, _ := strings.Cut(c.Key.Backend, ":"); scheme {
	case "auto":
		if arg != "" {
			p.bad("key.backend", "\"auto\" takes no argument, got %q", c.Key.Backend)
		}
	case "file":
		if arg != "" && !filepath.IsAbs(arg) {
			p.bad("key.backend", "file path %q is not absolute", arg)
		}
	case "tpm":
	default:
		p.bad("key.backend", "%q is not auto, file:PATH or tpm:PATH", c.Key.Backend)
	}
}

func (c *Config) validateFactory(p *problems) {
	p.absPath("factory.port", c.Factory.Port, false)
	switch c.Factory.Baud {
	case 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1500000, 2000000, 3000000:
	default:
		p.bad("factory.baud", "%d is not a standard serial rate (e.g. 115200)", c.Factory.Baud)
	}
	p.absPath("factory.root", c.Factory.Root, true)
	f := c.Factory
	if f.USBGadget && f.Port != "" {
		p.bad("factory.usb_gadget", "factory.port is set too (%q): with the gadget the port is its /dev/ttyGS*; leave factory.port empty", f.Port)
	}
	if _, _, err := usbgadget.ParseID(f.USBID); err != nil {
		p.bad("factory.usb_id", "%v", err)
	}
	if err := usbgadget.CheckString("manufacturer", f.USBManufacturer); err != nil {
		p.bad("factory.usb_manufacturer", "%v", err)
	}
	if err := usbgadget.CheckString("product", f.USBProduct); err != nil {
		p.bad("factory.usb_product", "%v", err)
	}
	if strings.ContainsAny(f.USBUDC, "/\x00") || f.USBUDC == "." || f.USBUDC == ".." {
		p.bad("factory.usb_udc", "%q is not a name in /sys/class/udc", f.USBUDC)
	}
}

func (c *Config) validateDPS(p *problems) {
	if err := checkHostPort(c.DPS.Endpoint); err != nil {
		p.bad("dps.endpoint", "%v", err)
	}
	if c.DPS.IDScope != "" && !validIDScope(c.DPS.IDScope) {
		p.bad("dps.id_scope", "%q is not an ID scope (letters and digits, like 0ne00000000)", c.DPS.IDScope)
	}
	p.absPath("dps.trust_bundle", c.DPS.TrustBundle, false)
	switch c.DPS.Transport {
	case "mqtt", "websocket":
	default:
		p.bad("dps.transport", "%q is not mqtt or websocket", c.DPS.Transport)
	}
	if c.DPS.Payload != "" && !jsonValid(c.DPS.Payload) {
		p.bad("dps.payload", "is not a JSON document")
	}
	p.atLeast("dps.timeout", c.DPS.Timeout, Duration(5*time.Second))
}

func (c *Config) validateHub(p *problems) {
	if c.Hub.KeepAlive < Duration(10*time.Second) || c.Hub.KeepAlive > Duration(1177*time.Second) {
		p.bad("hub.keepalive", "%s is outside 10s..1177s (IoT Hub drops idle links at 1.5x keepalive, capped at 1767s)", c.Hub.KeepAlive)
	}
	if c.Hub.MaxFailures < 1 || c.Hub.MaxFailures > 1000 {
		p.bad("hub.max_failures", "%d is outside 1..1000", c.Hub.MaxFailures)
	}
	p.atLeast("hub.connect_timeout", c.Hub.ConnectTimeout, Duration(time.Second))
	if c.Hub.ReprovisionAfter < 0 {
		p.bad("hub.reprovision_after", "must not be negative")
	}
}

func (c *Config) validateNetwork(p *problems) {
	for host, addr := range c.Network.Resolve {
		if host == "" || strings.ContainsAny(host, " /") {
			p.bad("network.resolve", "key %q is not a host name", host)
		}
		if err := checkHostPort(addr); err != nil {
			p.bad("network.resolve."+host, "%v", err)
		}
	}
	if c.Network.Proxy != "" {
		// Errors name the value with its password masked: they reach
		// logs and terminals.
		u, err := url.Parse(c.Network.Proxy)
		switch {
		case err != nil:
			p.bad("network.proxy", "%q is not a URL", RedactURL(c.Network.Proxy))
		case u.Scheme != "http":
			p.bad("network.proxy", "%q must be http://host:port (an HTTP CONNECT proxy)", RedactURL(c.Network.Proxy))
		case u.Host == "":
			p.bad("network.proxy", "%q has no host", RedactURL(c.Network.Proxy))
		}
	}
}

func (c *Config) validateRetry(p *problems) {
	p.atLeast("retry.min_delay", c.Retry.MinDelay, Duration(100*time.Millisecond))
	p.positive("retry.max_delay", c.Retry.MaxDelay)
	if c.Retry.MaxDelay < c.Retry.MinDelay {
		p.bad("retry.max_delay", "%s is below retry.min_delay %s", c.Retry.MaxDelay, c.Retry.MinDelay)
	}
	if c.Retry.Jitter < 0 {
		p.bad("retry.jitter", "must not be negative")
	}
	p.positive("retry.revoked_min", c.Retry.RevokedMin)
	p.positive("retry.revoked_max", c.Retry.RevokedMax)
	if c.Retry.RevokedMax < c.Retry.RevokedMin {
		p.bad("retry.revoked_max", "%s is below retry.revoked_min %s", c.Retry.RevokedMax, c.Retry.RevokedMin)
	}
	if c.Retry.RevokedMin > 0 && c.Retry.RevokedMin < Duration(time.Minute) && !c.Debug.AllowClockOverride {
		p.bad("retry.revoked_min", "%s would hammer the service; use at least 1m", c.Retry.RevokedMin)
	}
}

func (c *Config) validateLocalAPI(p *problems) {
	if c.LocalAPI.Socket != "" {
		p.absPath("local_api.socket", c.LocalAPI.Socket, false)
		if len(c.LocalAPI.Socket) > 107 {
			p.bad("local_api.socket", "path is %d bytes; Unix sockets allow 107", len(c.LocalAPI.Socket))
		}
	}
	if c.LocalAPI.Group != "" && !validGroupName(c.LocalAPI.Group) {
		p.bad("local_api.group", "%q is not a group name", c.LocalAPI.Group)
	}
	if c.LocalAPI.MaxMessage < 1 || c.LocalAPI.MaxMessage > 256*1024 {
		p.bad("local_api.max_message", "%d is outside 1..262144 (IoT Hub's 256 KB limit)", c.LocalAPI.MaxMessage)
	}
	if c.LocalAPI.MaxClients < 1 || c.LocalAPI.MaxClients > 1024 {
		p.bad("local_api.max_clients", "%d is outside 1..1024", c.LocalAPI.MaxClients)
	}
	if c.LocalAPI.MaxClientsPerUID < 1 || c.LocalAPI.MaxClientsPerUID > 1024 {
		p.bad("local_api.max_clients_per_uid", "%d is outside 1..1024", c.LocalAPI.MaxClientsPerUID)
	}
	if c.LocalAPI.IdleTimeout.D() < time.Second {
		p.bad("local_api.idle_timeout", "%s is below 1s", c.LocalAPI.IdleTimeout)
	}
}

func (c *Config) validateQueue(p *problems) {
	if c.Queue.SegmentBytes < 64*1024 {
		p.bad("queue.segment_bytes", "%d is below 65536", c.Queue.SegmentBytes)
	}
	if c.Queue.MaxBytes < 2*c.Queue.SegmentBytes {
		p.bad("queue.max_bytes", "%d must be at least twice queue.segment_bytes (%d)", c.Queue.MaxBytes, c.Queue.SegmentBytes)
	}
	if c.Queue.SegmentBytes < int64(c.LocalAPI.MaxMessage)+64 {
		p.bad("queue.segment_bytes", "%d cannot hold one local_api.max_message (%d)", c.Queue.SegmentBytes, c.LocalAPI.MaxMessage)
	}
	switch c.Queue.Fsync {
	case "always", "batch", "never":
	default:
		p.bad("queue.fsync", "%q is not always, batch or never", c.Queue.Fsync)
	}
	p.atLeast("queue.fsync_interval", c.Queue.FsyncInterval, Duration(10*time.Millisecond))
}

func (c *Config) validateHealth(p *problems) {
	if c.Health.Interval < 0 {
		p.bad("health.interval", "must not be negative")
	} else if c.Health.Interval > 0 && c.Health.Interval < Duration(10*time.Second) {
		p.bad("health.interval", "%s is too frequent; use 0 (on connect only) or at least 10s", c.Health.Interval)
	}
}

func (c *Config) validateRenewal(p *problems) {
	switch c.Renewal.Path {
	case "dps", "hub", "none":
	case "est":
		if u, err := url.Parse(c.Renewal.ESTURL); err != nil || u.Scheme != "https" || u.Host == "" {
			p.bad("renewal.est_url", "%q must be an https:// URL when renewal.path is \"est\"", RedactURL(c.Renewal.ESTURL))
		}
	case "auto":
		if c.Renewal.ESTURL != "" {
			if u, err := url.Parse(c.Renewal.ESTURL); err != nil || u.Scheme != "https" || u.Host == "" {
				p.bad("renewal.est_url", "%q must be an https:// URL", RedactURL(c.Renewal.ESTURL))
			}
		}
	default:
		p.bad("renewal.path", "%q is not auto, dps, hub, est or none", c.Renewal.Path)
	}
	switch c.Renewal.KeyCurve {
	case "", "P-256", "P-384":
	default:
		p.bad("renewal.key_curve", "%q is not \"P-256\" or \"P-384\"", c.Renewal.KeyCurve)
	}
	for _, f := range []struct{ key, v string }{
		{"renew_at", c.Renewal.RenewAt}, {"jitter", c.Renewal.Jitter}, {"retry", c.Renewal.Retry}, {"margin", c.Renewal.Margin},
	} {
		pol := rotate.DefaultPolicy()
		if err := pol.Set(f.key, f.v); f.v != "" && err != nil {
			p.bad("renewal."+f.key, "%v", err)
		}
	}
}
