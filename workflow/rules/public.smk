# Public data sets fetched by rule, only when asked (resources/README.md): `snakemake --cores 4
# fetch_xenium_public` downloads every Xenium data set of the list and writes a slide sheet for
# them; name that sheet in niche.slides to run the study on them. A TCGA project's slides and RNA
# come the same way, with the survival study's sheets for them (fetch_tcga_cohort). Downloads run
# on the host that runs Snakemake (localrule: cluster nodes often have no internet); the bundle
# and its H&E are two jobs, so a failed H&E download does not throw away a bundle of tens of GB.


rule fetch_xenium_bundle:
    output:
        outs=directory(f"{PUBLIC_XENIUM}/{{public}}/outs"),
    log:
        f"{LOGS}/public/xenium_bundle/{{public}}.log",
    benchmark:
        f"{BENCH}/public/xenium_bundle/{{public}}.tsv"
    localrule: True
    resources:
        mem_mb=1000,
        runtime=minutes(600),
    params:
        url=public_xenium_url("outs"),  # the URL alone: editing the row's tissue fetches nothing again
    run:
        from tissuekd.logs import run_in_process
        from tissuekd.niche.public import fetch_bundle

        run_in_process(log[0], lambda: fetch_bundle(params.url, output.outs))


rule fetch_xenium_he:
    output:
        he_image=f"{PUBLIC_XENIUM}/{{public}}/he_image.ome.tif",
        he_alignment=f"{PUBLIC_XENIUM}/{{public}}/he_imagealignment.csv",
    log:
        f"{LOGS}/public/xenium_he/{{public}}.log",
    benchmark:
        f"{BENCH}/public/xenium_he/{{public}}.tsv"
    localrule: True
    resources:
        mem_mb=1000,
        runtime=minutes(120),
    params:
        he_image=public_xenium_url("he_image"),
        he_alignment=public_xenium_url("he_alignment"),
    run:
        from tissuekd.logs import run_in_process
        from tissuekd.niche.public import fetch_he

        urls = {"he_image": params.he_image, "he_alignment": params.he_alignment}
        run_in_process(log[0], lambda: fetch_he(urls, output.he_image, output.he_alignment))


rule fetch_xenium_public:
    input:
        unpack(public_xenium_files),
    output:
        sheet=f"{PUBLIC_XENIUM}/niche_slides.tsv",
    log:
        f"{LOGS}/public/xenium_sheet.log",
    benchmark:
        f"{BENCH}/public/xenium_sheet.tsv"
    localrule: True
    params:
        slides=lambda wildcards: public_xenium_list()[["slide", "tissue"]].to_dict("records"),
    run:
        from tissuekd.logs import run_in_process
        from tissuekd.niche.public import write_sheet

        run_in_process(
            log[0], lambda: write_sheet(params.slides, input.outs, input.he_image, input.he_alignment, output.sheet)
        )


rule fetch_tcga_cdr:
    # TCGA-CDR (Liu et al. 2018, Cell), the clinical table the survival study reads, from the GDC;
    # checked against its published MD5.
    output:
        f"{PUBLIC_TCGA}/TCGA-CDR-SupplementalTableS1.xlsx",
    log:
        f"{LOGS}/public/tcga_cdr.log",
    benchmark:
        f"{BENCH}/public/tcga_cdr.tsv"
    localrule: True
    params:
        url=TCGA_CDR["url"],
        md5=TCGA_CDR["md5"],
    run:
        from tissuekd.io.download import download
        from tissuekd.logs import run_in_process

        run_in_process(log[0], lambda: download(params.url, output[0], md5=params.md5))


rule fetch_tcga_cohort:
    # A TCGA project's open diagnostic slides and STAR gene counts from the GDC API, laid out as
    # gdc-client lays out a cart, and survival sheets naming them (with TCGA-CDR) for
    # survival.cohorts / survival.slides. Files already fetched are kept: a rerun resumes.
    input:
        clinical=rules.fetch_tcga_cdr.output[0],
    output:
        sample_sheet=f"{PUBLIC_TCGA}/{{project}}/gdc_sample_sheet.tsv",
        slides=f"{PUBLIC_TCGA}/{{project}}/survival_slides.tsv",
        cohorts=f"{PUBLIC_TCGA}/{{project}}/survival_cohorts.tsv",
    log:
        f"{LOGS}/public/tcga_cohort/{{project}}.log",
    benchmark:
        f"{BENCH}/public/tcga_cohort/{{project}}.tsv"
    wildcard_constraints:
        project=r"TCGA-[A-Z]+",
    localrule: True
    threads: 4  # downloads at a time
    resources:
        mem_mb=1000,
        runtime=minutes(2880),
    params:
        api=config["public"]["gdc_api"],
    run:
        from tissuekd.logs import run_in_process
        from tissuekd.survival.public import fetch_cohort

        out = output
        run_in_process(
            log[0],
            lambda: fetch_cohort(
                params.api, wildcards.project, input.clinical, out.sample_sheet, out.slides, out.cohorts, threads
            ),
        )
