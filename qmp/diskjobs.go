package qmp

import (
	"context"
	"sort"
)

// JobsOfDisks maps each disk's Name() to the ids of the block jobs that
// use one of the nodes of its chain, sorted. It reads the edges from
// block-job nodes in x-debug-query-block-graph (a stream's "active node",
// a commit's "base", a mirror's "source", ...); a mirror's "target" edge
// does not count, since the target is not a layer of the source's chain.
// Jobs that have concluded hold no nodes and are not listed. Where the
// graph command is missing it returns an empty map and no error: callers
// then fall back to job ids (JobID).
func JobsOfDisks(ctx context.Context, c *Conn, disks []Disk) (map[string][]string, error) {
	out := make(map[string][]string)
	g, err := c.QueryBlockGraph(ctx)
	if err != nil {
		if IsClass(err, ClassCommandNotFound) {
			return out, nil
		}
		return nil, err
	}
	diskOf := make(map[string]string) // node name -> disk name
	for _, d := range disks {
		for _, l := range d.Chain {
			diskOf[l.NodeName] = d.Name()
		}
	}
	jobName := make(map[int64]string)
	nodeName := make(map[int64]string)
	for _, n := range g.Nodes {
		switch n.Type {
		case "block-job":
			jobName[n.ID] = n.Name
		case "block-driver":
			nodeName[n.ID] = n.Name
		}
	}
	seen := make(map[[2]string]bool)
	for _, e := range g.Edges {
		job, ok := jobName[e.Parent]
		if !ok || e.Name == "target" {
			continue
		}
		disk, ok := diskOf[nodeName[e.Child]]
		if !ok || seen[[2]string{disk, job}] {
			continue
		}
		seen[[2]string{disk, job}] = true
		out[disk] = append(out[disk], job)
	}
	for _, ids := range out {
		sort.Strings(ids)
	}
	return out, nil
}
