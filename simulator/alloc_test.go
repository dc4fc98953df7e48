package simulator_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"devid/simulator/simtest"
)

func TestAllocationAndReprovision(t *testing.T) {
	t.Parallel()
	sim := startSim(t, simtest.WithHubs("hub-a", "hub-b"), simtest.WithArgs("--hub-latency", "hub-b=5", "--hub-latency", "hub-a=50"))
	a, b := sim.Hub("hub-a"), sim.Hub("hub-b")

	t.Run("hashed spreads over both hubs", func(t *testing.T) {
		ca := simtest.NewDeviceCA(t)
		sim.EnrollGroup(t, "hashed", ca.Root)
		seen := map[string]int{}
		for i := 0; i < 12; i++ {
			st := register(t, sim, ca.Issue(t, "hashed-"+string(rune('a'+i))), "")
			seen[st.RegistrationState["assignedHub"].(string)]++
		}
		if seen[a.Host] == 0 || seen[b.Host] == 0 {
			t.Fatalf("hashed allocation used %v", seen)
		}
	})
	t.Run("weight excludes", func(t *testing.T) {
		ca := simtest.NewDeviceCA(t)
		sim.EnrollGroup(t, "weighted", ca.Root)
		sim.MustDo("PATCH", "/sim/hubs/hub-a", map[string]any{"applyAllocationPolicy": false}, nil)
		defer sim.MustDo("PATCH", "/sim/hubs/hub-a", map[string]any{"applyAllocationPolicy": true}, nil)
		for i := 0; i < 4; i++ {
			if st := register(t, sim, ca.Issue(t, "w-"+string(rune('a'+i))), ""); st.RegistrationState["assignedHub"] != b.Host {
				t.Fatalf("got %v, want only %s", st.RegistrationState["assignedHub"], b.Host)
			}
		}
	})
	t.Run("geoLatency", func(t *testing.T) {
		ca := simtest.NewDeviceCA(t)
		sim.EnrollGroup(t, "geo", ca.Root, simtest.Policy("geoLatency"))
		if st := register(t, sim, ca.Issue(t, "geo-1"), ""); st.RegistrationState["assignedHub"] != b.Host {
			t.Fatalf("geoLatency chose %v, want %s (5 ms)", st.RegistrationState["assignedHub"], b.Host)
		}
	})
	t.Run("static without a hub fails", func(t *testing.T) {
		ca := simtest.NewDeviceCA(t)
		sim.EnrollGroup(t, "static-bad", ca.Root, simtest.Policy("static"))
		st := register(t, sim, ca.Issue(t, "static-bad-1"), "")
		if st.Status != "failed" || st.RegistrationState["errorCode"] != float64(400208) {
			t.Fatalf("%+v", st)
		}
	})
	t.Run("individual enrollment with device id and reprovision", func(t *testing.T) {
		dev := simtest.SelfSigned(t, "indiv-1")
		sim.EnrollIndividual(t, "indiv-1", dev.Leaf, simtest.Policy("static"), simtest.LinkedHubs(a.Host),
			simtest.Field("deviceId", "custom-device-id"), simtest.InitialDesired(map[string]any{"mode": "x"}))
		st := register(t, sim, dev, "")
		if st.RegistrationState["deviceId"] != "custom-device-id" || st.RegistrationState["assignedHub"] != a.Host {
			t.Fatalf("%+v", st)
		}
		x, _ := json.Marshal(st.RegistrationState["x509"])
		if string(x) != "{}" {
			t.Fatalf("x509 of an individual registration = %s, want {}", x)
		}
		// Move to hub-b, migrating data.
		sim.EnrollIndividual(t, "indiv-1", dev.Leaf, simtest.Policy("static"), simtest.LinkedHubs(b.Host), simtest.Field("deviceId", "custom-device-id"))
		st = register(t, sim, dev, "")
		if st.RegistrationState["assignedHub"] != b.Host || st.RegistrationState["substatus"] != "deviceDataMigrated" {
			t.Fatalf("%+v", st)
		}
		var twin map[string]any
		sim.MustDo("GET", "/hubs/hub-b/twins/custom-device-id", nil, &twin)
		if twin["properties"].(map[string]any)["desired"].(map[string]any)["mode"] != "x" {
			t.Fatalf("twin not migrated: %v", twin)
		}
		if st, _ := sim.Do("GET", "/hubs/hub-a/devices/custom-device-id", nil, nil); st != 404 {
			t.Fatalf("old hub still has the device: %d", st)
		}
		// Back to hub-a without migration.
		sim.EnrollIndividual(t, "indiv-1", dev.Leaf, simtest.Policy("static"), simtest.LinkedHubs(a.Host),
			simtest.Field("deviceId", "custom-device-id"), simtest.Reprovision(true, false))
		st = register(t, sim, dev, "")
		if st.RegistrationState["substatus"] != "reprovisionedToInitialAssignment" {
			t.Fatalf("%+v", st)
		}
		// Never reprovision: stays.
		sim.EnrollIndividual(t, "indiv-1", dev.Leaf, simtest.Policy("static"), simtest.LinkedHubs(b.Host),
			simtest.Field("deviceId", "custom-device-id"), simtest.Reprovision(false, true))
		if st = register(t, sim, dev, ""); st.RegistrationState["assignedHub"] != a.Host {
			t.Fatalf("%+v", st)
		}
	})
	t.Run("custom allocation passes the payload through", func(t *testing.T) {
		var got map[string]any
		hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_ = json.NewDecoder(r.Body).Decode(&got)
			_ = json.NewEncoder(w).Encode(map[string]any{"iotHubHostName": b.Host, "payload": map[string]any{"echo": got["deviceRuntimeContext"].(map[string]any)["payload"]}})
		}))
		defer hook.Close()
		ca := simtest.NewDeviceCA(t)
		sim.EnrollGroup(t, "custom", ca.Root, simtest.Policy("custom"),
			simtest.Field("customAllocationDefinition", map[string]string{"webhookUrl": hook.URL, "apiVersion": "2021-10-01"}))
		st := register(t, sim, ca.Issue(t, "custom-1"), `{"registrationId":"custom-1","payload":{"modelId":"dtmi:x;1"}}`)
		p, _ := json.Marshal(st.RegistrationState["payload"])
		if st.RegistrationState["assignedHub"] != b.Host || string(p) != `{"echo":{"modelId":"dtmi:x;1"}}` {
			t.Fatalf("%+v payload %s", st, p)
		}
		if got["enrollmentGroup"] == nil || got["linkedHubs"] == nil {
			t.Fatalf("webhook request %v", got)
		}
	})
}
