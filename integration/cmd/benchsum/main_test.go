package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkFootprint/2.4/keel-2    	       1	2969221349 ns/op	      3373 pss-kB	      9316 rss-kB
--- BENCH: BenchmarkFootprint/2.4/keel-2
    bench_test.go:81: keel shims: Rss kB [9276 9316]
BenchmarkFootprint/2.4/runc-2    	       1	3166713076 ns/op	      6875 pss-kB	     18216 rss-kB
BenchmarkFootprint/2.4/keel#01-2 	       1	2969221349 ns/op	      3375 pss-kB	      9318 rss-kB
BenchmarkFootprint/2.4/runc#01-2 	       1	3166713076 ns/op	      6877 pss-kB	     18218 rss-kB
BenchmarkFootprint/2.4/keel#02-2 	       1	2969221349 ns/op	      3371 pss-kB	      9314 rss-kB
BenchmarkFootprint/2.4/runc#02-2 	       1	3166713076 ns/op	      6873 pss-kB	     18214 rss-kB
BenchmarkStdout/2.4/fifo/keel-2  	       1	2911193830 ns/op	 380.26 MB/s
BenchmarkStdout/2.4/fifo/runc-2  	       1	2911193830 ns/op	 190.13 MB/s
BenchmarkFootprint/2.4/keel#03-2 	       1	2969221349 ns/op	      1200 keel-heap-alloc-kB
BenchmarkOverhead/2.4/cycle/floor-2 	      20	  1 ns/op	  40.0 median-ms
BenchmarkOverhead/2.4/cycle/keel-2  	      20	  1 ns/op	  60.0 median-ms
BenchmarkOverhead/2.4/cycle/runc-2  	      20	  1 ns/op	  80.0 median-ms
BenchmarkOverhead/2.4/cycle/runc#01-2  	      20	  1 ns/op	  80.0 median-ms
BenchmarkOverhead/2.4/cycle/keel#01-2  	      20	  1 ns/op	  60.0 median-ms
BenchmarkOverhead/2.4/cycle/floor#01-2 	      20	  1 ns/op	  40.0 median-ms
PASS
`

func TestSummary(t *testing.T) {
	var out, errs strings.Builder
	if rc := run(strings.NewReader(sample), &out, &errs, false); rc != 0 {
		t.Fatalf("rc %d, stderr %s", rc, errs.String())
	}
	for _, want := range []string{
		"Footprint/2.4  pss-kB  3373.0  6875.0  0.49  0%, 0%  3, 3",
		"Stdout/2.4/fifo  MB/s    380.3   190.1   2.00  0%, 0%  1, 1  -  -",
		"Footprint/2.4 keel-heap-alloc-kB 1200.0 missing - 0%, - 1, 0 - -",
		"Overhead/2.4/cycle median-ms 60.000 80.000 0.75 0%, 0% 2, 2 40.000 0.50",
	} {
		if !strings.Contains(strings.Join(strings.Fields(out.String()), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "ns/op") {
		t.Errorf("ns/op reported:\n%s", out.String())
	}
}

func TestMissingSideFails(t *testing.T) {
	in := "BenchmarkStartExit/2.4/keel-2 1 163023430 ns/op 163.0 median-ms\n" +
		"--- FAIL: BenchmarkStartExit/2.4/runc\n"
	var out, errs strings.Builder
	if rc := run(strings.NewReader(in), &out, &errs, false); rc != 1 {
		t.Fatalf("rc %d, want 1", rc)
	}
	for _, want := range []string{"failure in the output", "1 keel and 0 runc results"} {
		if !strings.Contains(errs.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs.String())
		}
	}
}
