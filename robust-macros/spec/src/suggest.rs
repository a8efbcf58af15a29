//! "Did you mean": the closest known name to a typo, and the lists messages show.

/// "unknown {what} `{value}`", with the closest candidate when one is a likely typo, else the list.
pub fn unknown(what: &str, value: &str, candidates: &[&str]) -> String {
    match closest(value, candidates) {
        Some(candidate) => format!("unknown {what} `{value}`; did you mean `{candidate}`?"),
        None => format!(
            "unknown {what} `{value}`; expected one of {}",
            backticked(candidates)
        ),
    }
}

/// "`a`, `b`, `c`".
pub fn backticked(words: &[&str]) -> String {
    words
        .iter()
        .map(|word| format!("`{word}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "`a`", "`a` or `b`", "`a`, `b` or `c`".
pub fn or_list(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The candidate `input` was most likely meant to be: at most one edit per three characters, or
/// one a prefix of the other (`epsilon` → `eps`, `step` → `steps`). Inputs of one or two
/// characters get no suggestion, since one edit there is a different word (`l1` is not `l2`).
pub fn closest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let input = input.to_lowercase();
    let threshold = input.chars().count() / 3;
    candidates
        .iter()
        .filter_map(|&candidate| {
            let distance = edit_distance(&input, candidate);
            let prefix = input.len() >= 3
                && candidate.len() >= 3
                && (candidate.starts_with(&input) || input.starts_with(candidate));
            (distance <= threshold || prefix).then_some((distance, candidate))
        })
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance where swapping two neighbours counts as one edit (`pdg` → `pgd`).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: distance between the first i chars of a and the first j chars of b.
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    d[0] = (0..=b.len()).collect();
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn count_a_swap_of_neighbours_as_one_edit() {
        assert_eq!(edit_distance("pdg", "pgd"), 1);
        assert_eq!(edit_distance("pgd", "pgd"), 0);
        assert_eq!(edit_distance("fgsm", "pgd"), 3);
        assert_eq!(closest("pdg", &["fgsm", "pgd"]), Some("pgd"));
    }

    #[test]
    fn not_mistake_a_short_word_for_a_typo() {
        assert_eq!(closest("l1", &["linf", "l2"]), None);
        assert_eq!(closest("epsilon", &["eps", "steps"]), Some("eps"));
    }
}
