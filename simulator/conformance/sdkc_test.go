package conformance

import (
	"fmt"
	"testing"

	"devid/simulator/simtest"
)

// sdkcSample drives DPS the way Microsoft's azure-sdk-for-c
// paho_iot_provisioning_sample does: ClientId = registration ID, a
// username with &ClientVersion, CleanSession 0, $rid 1 for every request
// and a register body that is empty (the SDK header says the body "may"
// carry JSON) or, as some clients send, whitespace. It returns the final
// reply.
func sdkcSample(t *testing.T, tg *target, dev *deviceCert, body []byte) dpsReply {
	t.Helper()
	c, err := dialTLS(t, tg.dps(), tg.roots, &dev.TLS)
	if err != nil {
		t.Fatalf("TLS to DPS: %v", err)
	}
	defer c.close()
	user := dpsUser(tg.ready.IDScope, dev.CN) + "&ClientVersion=azsdk-c%2F1.6.0"
	if rc, err := c.connect(dev.CN, user, false); err != nil || rc != 0 {
		t.Fatalf("CONNECT: CONNACK %d, %v", rc, err)
	}
	c.mustSubscribe("$dps/registrations/res/#")
	r, err := c.dpsRequest("$dps/registrations/PUT/iotdps-register/?$rid=1", 1, body)
	for i := 0; err == nil && r.status == 202 && i < 5; i++ {
		r, err = c.dpsRequest("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId="+jstr(r.body, "operationId"), 1, nil)
	}
	if err != nil {
		t.Fatalf("register with an empty body: %v", err)
	}
	return r
}

// TestDPSEmptyRegisterBody: an empty register body is taken as the
// registration ID of the username, as the C SDK sample needs; the
// --empty-register-body reject switch gives the strict 400
// (docs/simulator.md, Switches).
func TestDPSEmptyRegisterBody(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "conformance sdk-c CA")
	t.Run("accept", func(t *testing.T) {
		t.Parallel()
		tg := startSim(t)
		tg.enrollGroup("sdkc", ca.PEM, nil)
		for i, body := range []string{"", " \r\n\t"} {
			cn := fmt.Sprintf("sdkc-empty-%d", i)
			r := sdkcSample(t, tg, ca.issue(t, cn, leafOpts{}), []byte(body))
			if r.status != 200 || jstr(r.body, "status") != "assigned" || jstr(r.body, "registrationState", "registrationId") != cn {
				t.Errorf("register body %q: %s %s; want 200 assigned for %s", body, r.topic, r.raw, cn)
			}
		}
	})
	t.Run("reject", func(t *testing.T) {
		t.Parallel()
		tg := startSim(t, simtest.WithArgs("--empty-register-body", "reject"))
		tg.enrollGroup("sdkc", ca.PEM, nil)
		r := sdkcSample(t, tg, ca.issue(t, "sdkc-empty-9", leafOpts{}), nil)
		if r.status != 400 {
			t.Fatalf("empty register body with --empty-register-body reject: %s %s; want 400", r.topic, r.raw)
		}
		checkErrorBody(t, r)
	})
}
