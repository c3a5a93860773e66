//! CPU time and resident memory of process trees, read from /proc (one scan for all
//! instances per policy tick).

use std::collections::HashMap;

/// CPU ticks (user + system) and RSS of a process and all its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
}

struct Stat {
    ppid: u32,
    ticks: u64,
    rss_pages: u64,
}

/// Parse `/proc/PID/stat`: the command may hold spaces and parentheses, so fields are
/// counted after the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15, rss 24.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        ppid: field(4)? as u32,
        ticks: field(14)? + field(15)?,
        rss_pages: field(24)?,
    })
}

/// Clock ticks per second (for turning ticks into CPU%).
pub fn ticks_per_second() -> u64 {
    match rustix::param::clock_ticks_per_second() {
        0 => 100,
        t => t,
    }
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// Usage of each root's process tree, from one scan of /proc.
pub fn tree_usage(roots: &[u32]) -> HashMap<u32, TreeUsage> {
    let mut stats: HashMap<u32, Stat> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(st) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                stats.insert(pid, st);
            }
        }
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, st) in &stats {
        children.entry(st.ppid).or_default().push(pid);
    }
    let page = page_size();
    roots
        .iter()
        .filter(|r| stats.contains_key(r))
        .map(|&root| {
            let mut usage = TreeUsage::default();
            let mut stack = vec![root];
            let mut seen = 0;
            while let Some(pid) = stack.pop() {
                seen += 1;
                if seen > 10_000 {
                    break;
                }
                if let Some(st) = stats.get(&pid) {
                    usage.cpu_ticks += st.ticks;
                    usage.rss_bytes += st.rss_pages * page;
                }
                if let Some(kids) = children.get(&pid) {
                    stack.extend(kids);
                }
            }
            (root, usage)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_with_spaces_and_parens() {
        let line = "1234 (my (odd) cmd) S 77 1234 1234 0 -1 4194560 100 0 0 0 15 5 0 0 20 0 1 0 \
                    100 1000000 250 18446744073709551615";
        let st = parse_stat(line).expect("parsed");
        assert_eq!(st.ppid, 77);
        assert_eq!(st.ticks, 20);
        assert_eq!(st.rss_pages, 250);
    }

    #[test]
    fn reads_this_process_tree() {
        let me = std::process::id();
        let u = tree_usage(&[me]);
        let mine = u.get(&me).expect("this process is in /proc");
        assert!(mine.rss_bytes > 1024 * 1024);
    }
}
