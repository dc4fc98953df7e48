package conformance

import (
	"net/http"
	"net/url"
	"testing"

	"devid/simulator/simtest"
)

// TestEnrollmentMatching checks which enrollment DPS picks for a presented
// chain (docs/simulator.md, "Enrollments and allocation"): an individual enrollment for the leaf first; else the group
// of the first intermediate, walking up to the root; the first match wins
// even when it is disabled; and the device must present its intermediates.
func TestEnrollmentMatching(t *testing.T) {
	t.Parallel()
	tg := startSim(t)

	group := func(tg *target, id string, pemCert []byte, status string) {
		tg.enrollGroup(id, pemCert, map[string]any{"provisioningStatus": status})
	}
	outcome := func(t *testing.T, tg *target, dev *simtest.DeviceCert, chain bool) dpsOutcome {
		cert := dev.TLSCertificate()
		if !chain {
			cert.Certificate = cert.Certificate[:1]
		}
		cn := dev.Leaf.Subject.CommonName
		return tg.dpsAttempt(t, &cert, cn, dpsUser(tg.ready.IDScope, cn), registerTopic, 1, registerBody(cn))
	}
	assignedVia := func(t *testing.T, o dpsOutcome, wantGroup string) {
		t.Helper()
		r := o.last()
		if r == nil || r.status != 200 || jstr(r.body, "status") != "assigned" {
			t.Fatalf("want assigned, got %s", o)
		}
		if g := jstr(r.body, "registrationState", "x509", "enrollmentGroupId"); g != wantGroup {
			t.Errorf("registrationState.x509.enrollmentGroupId = %q, want %q", g, wantGroup)
		}
	}

	t.Run("group on the intermediate", func(t *testing.T) {
		tg := tg.on(t)
		t.Parallel()
		ca := simtest.NewDeviceCA(t)
		group(tg, "m-inter", simtest.PEM(ca.Intermediate), "enabled")
		assignedVia(t, outcome(t, tg, ca.Issue(t, "m-inter-1"), true), "m-inter")
	})
	t.Run("intermediate group wins over root group", func(t *testing.T) {
		tg := tg.on(t)
		t.Parallel()
		ca := simtest.NewDeviceCA(t)
		group(tg, "m-both-root", simtest.PEM(ca.Root), "enabled")
		group(tg, "m-both-inter", simtest.PEM(ca.Intermediate), "enabled")
		assignedVia(t, outcome(t, tg, ca.Issue(t, "m-both-1"), true), "m-both-inter")
	})
	t.Run("disabled first match does not fall through", func(t *testing.T) {
		tg := tg.on(t)
		t.Parallel()
		ca := simtest.NewDeviceCA(t)
		group(tg, "m-fall-root", simtest.PEM(ca.Root), "enabled")
		group(tg, "m-fall-inter", simtest.PEM(ca.Intermediate), "disabled")
		o := outcome(t, tg, ca.Issue(t, "m-fall-1"), true)
		r := o.last()
		if r == nil || (jstr(r.body, "status") != "disabled" && r.status != 401) {
			t.Errorf("disabled intermediate group with an enabled root group: %s; want disabled / 401, no fall-through", o)
		}
	})
	t.Run("individual enrollment wins over group", func(t *testing.T) {
		tg := tg.on(t)
		t.Parallel()
		ca := simtest.NewDeviceCA(t)
		group(tg, "m-ind-group", simtest.PEM(ca.Root), "enabled")
		dev := ca.Issue(t, "m-ind-1")
		tg.mustDo(http.MethodPut, "/enrollments/"+url.PathEscape("m-ind-1")+q(dpsServiceAPI), map[string]any{
			"registrationId": "m-ind-1", "deviceId": "m-ind-device",
			"attestation": map[string]any{"type": "x509", "x509": map[string]any{
				"clientCertificates": map[string]any{"primary": map[string]any{"certificate": string(simtest.PEM(dev.Leaf))}}}},
		}, nil)
		o := outcome(t, tg, dev, true)
		assignedVia(t, o, "")
		if id := jstr(o.last().body, "registrationState", "deviceId"); id != "m-ind-device" {
			t.Errorf("deviceId %q, want the individual enrollment's m-ind-device", id)
		}
	})
	t.Run("leaf without its intermediate", func(t *testing.T) {
		tg := tg.on(t)
		t.Parallel()
		ca := simtest.NewDeviceCA(t)
		group(tg, "m-nochain-root", simtest.PEM(ca.Root), "enabled")
		wantAuthRefusal(t, "leaf presented without the intermediate", outcome(t, tg, ca.Issue(t, "m-nochain-1"), false))
	})
}
