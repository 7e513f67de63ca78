// Command benchsum summarises the output of the integration benchmarks
// (`go test -bench` in integration/): for every benchmark and metric, the
// median over all runs of Keel and of the reference runc shim, and the ratio
// keel/runc.
//
//	go run ./integration/cmd/benchsum [-md] < bench.out
//
// Sub-benchmark names end in the runtime, /keel or /runc; the "#01" suffixes
// that Go gives repeated rounds and the "-2" GOMAXPROCS suffix are dropped,
// so every round and every -count repetition of one benchmark is pooled.
// ns/op (harness time) is left out. The spread column is (max-min)/median
// of each side, to tell a ratio from noise.
//
// Where a benchmark also has /floor results (BenchmarkOverhead: raw runc
// doing the same work without containerd or a shim), the floor's median is
// shown and the last column is (keel-floor)/(runc-floor): the share of the
// reference's overhead above the floor that Keel costs.
//
// It exits 1 when the output holds a failure, or when a benchmark has
// results for one runtime and not the other: a comparison with a missing
// side must not pass for a result. Metrics whose unit starts with "keel-"
// (the Go runtime's own figures, which only Keel's shim reports) are the
// exception: they are shown for Keel alone.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

var runtimes = []string{"keel", "runc", "floor"}

type key struct{ bench, unit string }

var (
	procsRE = regexp.MustCompile(`-\d+$`)
	roundRE = regexp.MustCompile(`#\d+$`)
)

func main() {
	md := flag.Bool("md", false, "print a Markdown table")
	flag.Parse()
	os.Exit(run(os.Stdin, os.Stdout, os.Stderr, *md))
}

func run(in io.Reader, out, errw io.Writer, md bool) int {
	samples := map[key]map[string][]float64{}
	var order []key
	var problems []string
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		trim := strings.TrimSpace(line)
		if strings.HasPrefix(trim, "--- FAIL") || trim == "FAIL" || strings.HasPrefix(trim, "FAIL\t") || strings.HasPrefix(trim, "panic:") {
			problems = append(problems, "failure in the output: "+trim)
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue // a log line, not a result
		}
		name := procsRE.ReplaceAllString(f[0], "")
		i := strings.LastIndexByte(name, '/')
		if i < 0 {
			continue
		}
		bench, rt := strings.TrimPrefix(name[:i], "Benchmark"), roundRE.ReplaceAllString(name[i+1:], "")
		if !slices.Contains(runtimes, rt) {
			continue
		}
		for j := 2; j+1 < len(f); j += 2 {
			v, err := strconv.ParseFloat(f[j], 64)
			if err != nil {
				problems = append(problems, fmt.Sprintf("bad value %q in %q", f[j], line))
				break
			}
			unit := f[j+1]
			if unit == "ns/op" || unit == "B/op" || unit == "allocs/op" {
				continue
			}
			k := key{bench, unit}
			if samples[k] == nil {
				samples[k] = map[string][]float64{}
				order = append(order, k)
			}
			samples[k][rt] = append(samples[k][rt], v)
		}
	}
	if err := sc.Err(); err != nil {
		problems = append(problems, err.Error())
	}

	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	sep := "\t"
	if md {
		fmt.Fprintln(out, "| benchmark | metric | keel | runc | keel/runc | spread (keel, runc) | runs (keel, runc) | floor | (keel-floor)/(runc-floor) |")
		fmt.Fprintln(out, "|---|---|---:|---:|---:|---|---|---:|---:|")
	} else {
		fmt.Fprintln(tw, "benchmark\tmetric\tkeel\trunc\tkeel/runc\tspread (keel, runc)\truns (keel, runc)\tfloor\t(keel-floor)/(runc-floor)")
	}
	for _, k := range order {
		s := samples[k]
		keel, runc, floor := s["keel"], s["runc"], s["floor"]
		ratio, over, fl := "-", "-", "-"
		if len(keel) == 0 || len(runc) == 0 {
			if !(strings.HasPrefix(k.unit, "keel-") && len(runc) == 0 && len(keel) > 0) {
				problems = append(problems, fmt.Sprintf("%s %s: %d keel and %d runc results; a comparison needs both", k.bench, k.unit, len(keel), len(runc)))
			}
		} else if m := median(runc); m != 0 {
			ratio = fmt.Sprintf("%.2f", median(keel)/m)
		}
		if len(floor) > 0 {
			f := median(floor)
			fl = num(floor)
			if len(keel) > 0 && len(runc) > 0 && median(runc) != f {
				over = fmt.Sprintf("%.2f", (median(keel)-f)/(median(runc)-f))
			}
		}
		cells := []string{k.bench, k.unit, num(keel), num(runc), ratio, spread(keel) + ", " + spread(runc), fmt.Sprintf("%d, %d", len(keel), len(runc)), fl, over}
		if md {
			fmt.Fprintln(out, "| "+strings.Join(cells, " | ")+" |")
		} else {
			fmt.Fprintln(tw, strings.Join(cells, sep))
		}
	}
	tw.Flush()
	if len(order) == 0 {
		problems = append(problems, "no keel/runc benchmark results in the input")
	}
	for _, p := range problems {
		fmt.Fprintln(errw, "benchsum:", p)
	}
	if len(problems) > 0 {
		return 1
	}
	return 0
}

func num(xs []float64) string {
	if len(xs) == 0 {
		return "missing"
	}
	m := median(xs)
	switch {
	case m >= 1e6:
		return strconv.FormatFloat(m, 'f', 0, 64)
	case m >= 100:
		return strconv.FormatFloat(m, 'f', 1, 64)
	default:
		return strconv.FormatFloat(m, 'f', 3, 64)
	}
}

// spread is (max-min)/median as a percentage.
func spread(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	m := median(xs)
	if m == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*(slices.Max(xs)-slices.Min(xs))/m)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
