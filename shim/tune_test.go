//go:build linux

package shim

import "testing"

func TestShimOOMScoreAdj(t *testing.T) {
	for containerd, want := range map[int]int{-999: -998, -500: -499, 0: 1, 999: 1000, 1000: 1000} {
		if got := shimOOMScoreAdj(containerd); got != want {
			t.Errorf("shimOOMScoreAdj(%d) = %d, want %d", containerd, got, want)
		}
	}
}
