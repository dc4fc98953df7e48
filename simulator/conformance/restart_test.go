package conformance

import (
	"net/http"
	"strings"
	"testing"

	"devid/simulator/simtest"
)

// TestRestartKeepsState stops devid-sim and starts it again on the same
// state directory and ports, then checks from outside that nothing a device
// or an operator relies on was lost: the server roots (old trust store still
// verifies), enrollments, registrations, hub devices, twins and recorded
// telemetry.
func TestRestartKeepsState(t *testing.T) {
	t.Parallel()
	sim := simtest.Start(t, extraArgs()...)
	tg := newTarget(t, sim.Ready)
	ca := newTestCA(t, "conformance restart CA")
	tg.enrollGroup("restart", ca.PEM, nil)
	d := tg.provision(t, ca, "restart-1")

	c := tg.hubConnect(t, d)
	id, err := c.publish("devices/"+d.id+"/messages/events/%24.mid=before-restart", 1, false, []byte("kept"))
	if err == nil {
		err = c.expectPuback(id) // PUBACK: the record is stored
	}
	if err != nil {
		t.Fatal(err)
	}
	c.mustSubscribe("$iothub/twin/res/#")
	c.publish("$iothub/twin/PATCH/properties/reported/?$rid=r1", 0, false, []byte(`{"boot":1}`))
	if st, _, _, err := twinReply(c); err != nil || st != 204 {
		t.Fatalf("reported patch: %d %v", st, err)
	}
	c.close()

	oldRoots := tg.roots
	sim.Restart()
	after := newTarget(t, sim.Ready)
	after.roots = oldRoots // devices keep the trust store they had

	c2 := after.hubConnect(t, d)
	c2.mustSubscribe("$iothub/twin/res/#")
	c2.publish("$iothub/twin/GET/?$rid=g", 0, false, nil)
	if st, _, body, err := twinReply(c2); err != nil || st != 200 || !strings.Contains(body, `"boot":1`) {
		t.Errorf("twin after restart: %d %s %v; want reported.boot 1", st, body, err)
	}
	found := false
	for _, r := range after.telemetry(d.name, d.id) {
		if jstr(r, "systemProperties", "messageId") == "before-restart" && jstr(r, "body") == "kept" {
			found = true
		}
	}
	if !found {
		t.Errorf("telemetry recorded before the restart is gone: %v", after.telemetry(d.name, d.id))
	}
	// Duplicate counting survives the restart: a resend is still a resend.
	id, err = c2.publish("devices/"+d.id+"/messages/events/%24.mid=before-restart", 1, false, []byte("kept"))
	if err == nil {
		err = c2.expectPuback(id)
	}
	if err != nil {
		t.Fatal(err)
	}
	if recs := after.telemetry(d.name, d.id); len(recs) == 0 || jget(recs[len(recs)-1], "duplicates") != float64(1) {
		t.Errorf("resend after the restart: %v; want duplicates 1", recs)
	}
	if rs := after.registrationState(d.CN); jstr(rs, "status") != "assigned" || jstr(rs, "deviceId") != d.id {
		t.Errorf("registration record after restart: %v", rs)
	}
	if st, _ := after.do(http.MethodGet, "/enrollmentGroups/restart"+q(dpsServiceAPI), nil); st != 200 {
		t.Errorf("enrollment group after restart: HTTP %d", st)
	}
	// The enrollment still admits new devices.
	after.provision(t, ca, "restart-2")
}
