package bench

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// cpuMeter measures the CPU time the benchmark process and the Redis
// server spend: on a machine that others share, CPU per call compares
// implementations more steadily than calls per second.
type cpuMeter struct {
	rdb             *redis.Client
	self0, redis0   time.Duration
	selfCPU, redCPU time.Duration
	// heap allocations of this process in the span measured
	mallocs0, mallocs uint64
}

func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func redisCPU(rdb *redis.Client) time.Duration {
	if rdb == nil {
		return 0
	}
	return RedisCPU(rdb)
}

// RedisCPU is the CPU time the Redis server rdb talks to has used, user
// and system (INFO cpu); 0 if it cannot be read.
func RedisCPU(rdb redis.UniversalClient) time.Duration {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		return 0
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}

func startCPU(redisURL string) *cpuMeter {
	m := &cpuMeter{}
	if redisURL != "" {
		if opt, err := redis.ParseURL(redisURL); err == nil {
			m.rdb = redis.NewClient(opt)
		}
	}
	m.mallocs0 = mallocs()
	m.self0, m.redis0 = selfCPU(), redisCPU(m.rdb)
	return m
}

func (m *cpuMeter) stop() {
	m.selfCPU, m.redCPU = selfCPU()-m.self0, redisCPU(m.rdb)-m.redis0
	m.mallocs = mallocs() - m.mallocs0
	if m.rdb != nil {
		m.rdb.Close()
	}
}
