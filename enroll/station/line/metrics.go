package line

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are a station's Prometheus metrics, in a registry of their own
// (docs/station.md lists them).
type Metrics struct {
	reg        *prometheus.Registry
	programmed prometheus.Counter
	leftAlone  prometheus.Counter
	failed     *prometheus.CounterVec
	step       *prometheus.HistogramVec
	issuance   prometheus.Histogram
}

func newMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		programmed: prometheus.NewCounter(prometheus.CounterOpts{Name: "devid_station_boards_programmed_total",
			Help: "Boards that got a certificate and reported it installed."}),
		leftAlone: prometheus.NewCounter(prometheus.CounterOpts{Name: "devid_station_boards_left_alone_total",
			Help: "Boards that held a valid certificate from this CA and were left alone."}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devid_station_boards_failed_total",
			Help: "Boards whose run failed, by the step that failed and the cause."}, []string{"step", "cause"}),
		step: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "devid_station_step_seconds",
			Help:    "Time of each programming step (jig.Step), from the end of the previous one.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"step"}),
		issuance: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "devid_station_issuance_seconds",
			Help:    "CA issuance latency: policy checks, signing and the ledger's durable write.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
	}
	m.reg.MustRegister(m.programmed, m.leftAlone, m.failed, m.step, m.issuance,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the registry the metrics are in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
