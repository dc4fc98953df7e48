package simulator

import (
	"testing"

	"devid/simulator/simapi"
)

func TestAppendTelemetryTrims(t *testing.T) {
	st, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	const max = 20
	for i := 0; i < 100; i++ {
		if err := st.appendTelemetry(&simapi.TelemetryRecord{DeviceID: "d"}, max); err != nil {
			t.Fatal(err)
		}
		recs, err := st.telemetry(0, 0, func(*simapi.TelemetryRecord) bool { return true })
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) > max+max/10 || recs[len(recs)-1].Seq != uint64(i+1) {
			t.Fatalf("after %d appends: %d records, last seq %d", i+1, len(recs), recs[len(recs)-1].Seq)
		}
		for j := 1; j < len(recs); j++ {
			if recs[j].Seq != recs[j-1].Seq+1 {
				t.Fatalf("gap in kept records: %d then %d", recs[j-1].Seq, recs[j].Seq)
			}
		}
		if i+1 >= max && len(recs) < max {
			t.Fatalf("after %d appends: only %d records kept, want >= %d", i+1, len(recs), max)
		}
	}
	if err := st.clearTelemetry(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < max; i++ {
		if err := st.appendTelemetry(&simapi.TelemetryRecord{DeviceID: "d"}, max); err != nil {
			t.Fatal(err)
		}
	}
	if recs, _ := st.telemetry(0, 0, func(*simapi.TelemetryRecord) bool { return true }); len(recs) != max || recs[0].Seq != 101 {
		t.Fatalf("after clear and %d appends: %d records, first %v", max, len(recs), recs[0].Seq)
	}
}
