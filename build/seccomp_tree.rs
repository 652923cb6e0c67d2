//! Lays a seccomp filter out as a binary search over syscall numbers.
//!
//! seccompiler compiles a filter as one linear chain: every syscall is a comparison, in
//! number order, so a syscall near the end of a 300-entry allow-list runs ~600
//! instructions, and the kernel, which works out at install time which syscalls the
//! filter always allows (by running the filter for every syscall number), pays that for
//! each number: ~1.5 ms per sandbox start for the sandbox's allow-list. Here the same
//! filter is a search tree over the syscall numbers: ~10 comparisons to any syscall.
//!
//! Nothing of the policy's meaning is reimplemented: seccompiler compiles each syscall's
//! rules on its own (its argument comparisons, its name table), and the blocks are moved
//! under the tree as they are. [`check`] then runs the tree and seccompiler's own program
//! side by side, for every syscall number and many arguments, and fails the build on any
//! difference.

use seccompiler::{TargetArch, sock_filter};

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGT_K: u16 = 0x25;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

/// At most this many syscall numbers are compared one after another in a leaf.
const LEAF: usize = 8;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn compile(
    json: &serde_json::Value,
    arch: TargetArch,
) -> std::collections::HashMap<String, Vec<sock_filter>> {
    seccompiler::compile_from_json(json.to_string().as_bytes(), arch)
        .unwrap_or_else(|e| panic!("seccomp policy does not compile: {e}"))
}

/// What a syscall number leads to.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// The filter's match action, whatever the arguments.
    Match,
    /// Block `i` of the argument checks.
    Block(usize),
}

/// An instruction, or a jump to a block not laid out yet.
enum Ins {
    Op(sock_filter),
    ToBlock(usize),
}

/// A filter laid out as a search tree, with what [`check`] compares it to.
pub struct Laid {
    pub program: Vec<sock_filter>,
    /// seccompiler's own program for the same filter.
    pub linear: Vec<sock_filter>,
    /// Each syscall number of the policy and where its rules are in `program` (none:
    /// the match action whatever the arguments).
    routes: Vec<(u32, Option<std::ops::Range<usize>>)>,
}

/// Filter `name` of `policy` (seccompiler's JSON), laid out as a search tree.
pub fn tree(policy: &serde_json::Value, name: &str, arch: TargetArch) -> Laid {
    let filter = &policy[name];
    let entries = filter["filter"].as_array().expect("a filter has a list");
    let linear = compile(policy, arch).remove(name).expect("compiled");
    // The same filter with only the entries of one syscall.
    let one = |list: Vec<serde_json::Value>| {
        let mut f = filter.clone();
        f["filter"] = serde_json::Value::Array(list);
        compile(&serde_json::json!({ "f": f }), arch)
            .remove("f")
            .expect("compiled")
    };
    // [arch check][mismatch] without syscalls: the arch check's length.
    let empty = one(Vec::new());
    let head = empty.len() - 1;
    let mismatch = empty[head].clone();
    assert_eq!(mismatch.code, BPF_RET_K);
    let mut names: Vec<&str> = entries
        .iter()
        .map(|e| e["syscall"].as_str().expect("an entry names its syscall"))
        .collect();
    names.sort();
    names.dedup();
    let mut targets: Vec<(u32, Target)> = Vec::new();
    let mut blocks: Vec<Vec<sock_filter>> = Vec::new();
    let mut matched = None;
    for n in names {
        let list: Vec<_> = entries
            .iter()
            .filter(|e| e["syscall"] == n)
            .cloned()
            .collect();
        // [arch check][ld nr][jeq nr,0,1][rules or the match][mismatch][mismatch]
        let p = one(list);
        assert_eq!((p[head].code, p[head].k), (BPF_LD_W_ABS, 0), "{n}");
        let test = p[head + 1].clone();
        assert_eq!((test.code, test.jt, test.jf), (BPF_JEQ_K, 0, 1), "{n}");
        let body = &p[head + 2..p.len() - 1];
        assert_eq!(
            body.last().map(|i| (i.code, i.k)),
            Some((mismatch.code, mismatch.k))
        );
        // No rules: [ja 1][ja 2][ret match][ret mismatch].
        let target = match body {
            [a, b, r, _]
                if (a.code, a.k, b.code, b.k, r.code) == (BPF_JA, 1, BPF_JA, 2, BPF_RET_K) =>
            {
                assert!(matched.is_none_or(|m| m == r.k));
                matched = Some(r.k);
                Target::Match
            }
            _ => {
                blocks.push(body.to_vec());
                Target::Block(blocks.len() - 1)
            }
        };
        targets.push((test.k, target));
    }
    targets.sort_by_key(|t| t.0);
    let mut code: Vec<Ins> = empty[..head].iter().cloned().map(Ins::Op).collect();
    code.push(Ins::Op(stmt(BPF_LD_W_ABS, 0)));
    let the_match = matched.unwrap_or(mismatch.k);
    code.extend(search(&targets, mismatch.k, the_match));
    // The blocks after the tree, each ending in its own returns.
    let mut starts = Vec::new();
    let mut at = code.len();
    for b in &blocks {
        starts.push(at);
        at += b.len();
    }
    let routes = targets
        .iter()
        .map(|(nr, t)| match t {
            Target::Match => (*nr, None),
            Target::Block(b) => (*nr, Some(starts[*b]..starts[*b] + blocks[*b].len())),
        })
        .collect();
    let mut out: Vec<sock_filter> = Vec::with_capacity(at);
    for ins in code {
        let i = match ins {
            Ins::Op(i) => i,
            Ins::ToBlock(b) => stmt(BPF_JA, (starts[b] - out.len() - 1) as u32),
        };
        out.push(i);
    }
    for b in blocks {
        out.extend(b);
    }
    // The first rule of a block starts with a jump past the block's end (seccompiler's
    // way on to the next syscall, never taken here): it must land inside the program.
    out.push(mismatch);
    assert!(out.len() < 4096, "filter {name} is too long");
    Laid {
        program: out,
        linear,
        routes,
    }
}

/// The search over `t` (sorted by number): inner nodes split on the middle number;
/// a leaf compares its few numbers, returns the match or jumps to a block.
fn search(t: &[(u32, Target)], mismatch: u32, matched: u32) -> Vec<Ins> {
    if t.len() > LEAF {
        let mid = t.len() / 2;
        let left = search(&t[..mid], mismatch, matched);
        let right = search(&t[mid..], mismatch, matched);
        // nr >= t[mid]: the next instruction, a long jump over the left half.
        let mut v = vec![
            Ins::Op(jump(BPF_JGE_K, t[mid].0, 0, 1)),
            Ins::Op(stmt(BPF_JA, left.len() as u32)),
        ];
        v.extend(left);
        v.extend(right);
        return v;
    }
    // [jeq nr_i → its exit]... [ret mismatch] [ret match] [ja block]...
    let blocks: Vec<usize> = t
        .iter()
        .filter_map(|(_, x)| match x {
            Target::Block(b) => Some(*b),
            Target::Match => None,
        })
        .collect();
    let exits = t.len() + 1; // index of `ret match`
    let mut v: Vec<Ins> = t
        .iter()
        .enumerate()
        .map(|(i, (nr, x))| {
            let exit = match x {
                Target::Match => exits,
                Target::Block(b) => exits + 1 + blocks.iter().position(|y| y == b).unwrap(),
            };
            Ins::Op(jump(BPF_JEQ_K, *nr, (exit - i - 1) as u8, 0))
        })
        .collect();
    v.push(Ins::Op(stmt(BPF_RET_K, mismatch)));
    v.push(Ins::Op(stmt(BPF_RET_K, matched)));
    v.extend(blocks.into_iter().map(Ins::ToBlock));
    v
}

/// Runs a classic BPF seccomp program on `data` (`struct seccomp_data`: nr, arch,
/// instruction pointer, six arguments), with only the instructions both programs use.
/// Returns the action and whether an argument was read on the way.
fn run(p: &[sock_filter], data: &[u32; 16]) -> (u32, bool) {
    run_visiting(p, data, &mut |_, _| {})
}

/// [`run`], telling `visit` each instruction's index and whether an argument was read
/// before it.
fn run_visiting(
    p: &[sock_filter],
    data: &[u32; 16],
    visit: &mut dyn FnMut(usize, bool),
) -> (u32, bool) {
    let (mut pc, mut a, mut read_args) = (0usize, 0u32, false);
    loop {
        visit(pc, read_args);
        let i = &p[pc];
        pc += 1;
        let cond = |c: bool| if c { i.jt as usize } else { i.jf as usize };
        match i.code {
            BPF_LD_W_ABS => {
                read_args |= i.k >= 16;
                a = data[i.k as usize / 4];
            }
            BPF_ALU_AND_K => a &= i.k,
            BPF_JA => pc += i.k as usize,
            BPF_JEQ_K => pc += cond(a == i.k),
            BPF_JGT_K => pc += cond(a > i.k),
            BPF_JGE_K => pc += cond(a >= i.k),
            BPF_JSET_K => pc += cond(a & i.k != 0),
            BPF_RET_K => return (i.k, read_args),
            c => panic!("instruction {c:#x} not understood"),
        }
    }
}

/// Fails the build unless the tree answers as seccompiler's program does: every syscall
/// number below 1024, numbers with the x32 bit and near the top, the wrong architecture,
/// and, where either program reads the arguments, many arguments made of the values
/// compared; and unless every run of the tree only ever runs its own syscall's rules.
pub fn check(name: &str, laid: &Laid, audit_arch: u32) {
    let (tree, linear) = (&laid.program[..], &laid.linear[..]);
    // Whose rules each instruction of the tree is (none: the search itself).
    let mut owner: Vec<Option<u32>> = vec![None; tree.len()];
    // Whether an instruction is the first of its syscall's rules.
    let mut first = vec![false; tree.len()];
    for (nr, range) in &laid.routes {
        if let Some(r) = range {
            first[r.start] = true;
        }
        for pc in range.clone().into_iter().flatten() {
            owner[pc] = Some(*nr);
        }
    }
    // Runs the tree on `d`; fails unless only `d`'s own syscall's rules run. Returns
    // the answer, whether an argument was read, and whether the rules were entered at
    // their first instruction before any argument was read.
    let run_own = |d: &[u32; 16]| {
        let mut entered = false;
        let (action, read_args) = run_visiting(tree, d, &mut |pc, read_args| {
            if let Some(o) = owner[pc] {
                assert_eq!(
                    o, d[0],
                    "filter {name}: syscall {:#x} runs {o}'s rules",
                    d[0]
                );
                entered |= first[pc] && !read_args;
            }
        });
        (action, read_args, entered)
    };
    // Each syscall number's path reaches the first instruction of its own rules
    // (seccompiler's code, moved as it is) before reading an argument; a number without
    // rules runs none.
    for nr in (0..1024).chain(laid.routes.iter().map(|r| r.0)) {
        let has_rules = laid.routes.iter().any(|r| r.0 == nr && r.1.is_some());
        let mut d = [0u32; 16];
        d[0] = nr;
        d[1] = audit_arch;
        let (_, _, entered) = run_own(&d);
        assert_eq!(
            entered, has_rules,
            "filter {name}: syscall {nr} misses its rules"
        );
    }
    // What the kernel checks before anything runs: every jump, taken or not, lands in
    // the program, which ends in a return.
    for (pc, i) in tree.iter().enumerate() {
        let far = match i.code {
            BPF_JA => i.k as usize,
            BPF_JEQ_K | BPF_JGT_K | BPF_JGE_K | BPF_JSET_K => i.jt.max(i.jf) as usize,
            _ => continue,
        };
        assert!(
            pc + 1 + far < tree.len(),
            "filter {name}: instruction {pc} jumps out"
        );
    }
    assert_eq!(
        tree.last().map(|i| i.code),
        Some(BPF_RET_K),
        "filter {name}"
    );
    // The values the programs compare with (each word of a 64-bit argument on its own).
    let mut words: Vec<u32> = vec![0, 1, 2, u32::MAX, 0x8000_0000, 0x7fff_ffff];
    for i in linear {
        if matches!(
            i.code,
            BPF_JEQ_K | BPF_JGT_K | BPF_JGE_K | BPF_JSET_K | BPF_ALU_AND_K
        ) {
            words.extend([i.k, i.k.wrapping_add(1), i.k.wrapping_sub(1), !i.k]);
        }
    }
    words.sort();
    words.dedup();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    let mut nrs: Vec<u32> = (0..1024).collect();
    nrs.extend([
        0x4000_0000,
        0x4000_0001,
        0x4000_0101,
        u32::MAX,
        u32::MAX - 1,
        1 << 31,
    ]);
    for nr in nrs {
        for arch in [audit_arch, audit_arch ^ 1, 0] {
            let mut d = [0u32; 16];
            d[0] = nr;
            d[1] = arch;
            let mut rounds = 1;
            let mut round = 0;
            while round < rounds {
                if round > 0 {
                    for w in d.iter_mut().skip(4) {
                        *w = words[next() % words.len()];
                    }
                    // Now and then, all arguments the same word (owner and group...).
                    if round % 7 == 0 {
                        let w = d[4];
                        d[4..].iter_mut().for_each(|x| *x = w);
                    }
                }
                let ((t, t_args, _), (l, l_args)) = (run_own(&d), run(linear, &d));
                assert_eq!(
                    t, l,
                    "filter {name}: the tree answers {t:#x}, seccompiler's program {l:#x}, for {d:x?}"
                );
                if round == 0 && (t_args || l_args) {
                    rounds = 3000;
                }
                round += 1;
            }
        }
    }
}
